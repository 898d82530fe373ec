"""``futuremask show-mask`` and ``futuremask attention-map``: pictures of masks and attention weights."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..merge_spec import merge_label
from ..names import DEFAULT_PANELS, MERGE_KINDS, MERGE_PANEL
from ..policies import accepted_names, get_policy
from .options import add_merge_options, add_model_options, add_policy_option, merges_from_args

if TYPE_CHECKING:
    from ..layout import TokenLayout
    from ..merge import Merge

DEFAULT_LAYOUT = "T4 V16 T6 V16 T8"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show-mask",
        help="draw each policy's attention mask side by side",
        description="Draw the mask of each policy for a synthetic layout or a real prompt (rows = queries, "
        "columns = keys; text and visual spans labelled on the axes).",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--layout", help=f'runs of T(ext) / V(isual) tokens, e.g. "{DEFAULT_LAYOUT}" (the default)')
    source.add_argument("--model", help="checkpoint dir or hub id whose processor tokenizes --prompt/--image")
    _prompt_args(p)
    add_policy_option(p, default=DEFAULT_PANELS, extra=[MERGE_PANEL],
                      help=f"panels to draw (default: {' '.join(DEFAULT_PANELS)})")
    p.add_argument("--merge-policy", default="future", choices=accepted_names(),
                   help="policy whose future the 'merge' panel folds into the sink (default: future)")
    p.add_argument("--output", default="masks.png", help="picture to write, .png, .svg or .pdf (default: masks.png)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=run_show_mask)

    a = sub.add_parser(
        "attention-map",
        help="draw one layer's attention weights under one or two policies",
        description="Run one prefill per policy and draw a layer's attention weights (one head or the mean), "
        "the weight visual rows give each key, and each row's mass on future keys and on the sink token.",
    )
    add_model_options(a, help="checkpoint dir or hub id (default: the built-in random-weight tiny LLaVA)")
    _prompt_args(a)
    a.add_argument("--policy", nargs="+", default=["causal", "future"], metavar="NAME[+MERGE]",
                   help="one or two policies side by side, e.g. 'causal future' or 'future future+kernel' "
                   f"(merge kinds: {', '.join(MERGE_KINDS)}); default: causal future")
    add_merge_options(a, help="fold the future into the sink for every non-causal policy")
    a.add_argument("--layer", type=int, default=-1, help="decoder layer of the text model (default -1: the last)")
    a.add_argument("--head", type=int, help="one query head (default: the mean over heads)")
    a.add_argument("--output", default="attention.png", help="picture to write (default: attention.png)")
    a.set_defaults(func=run_attention_map)


def _prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", help="image file for the prompt (default: a drawn picture of three shapes)")
    p.add_argument("--prompt", help="question text (default: a sample question)")


def _describe(layout: TokenLayout) -> str:
    from ..viz import spans

    return ", ".join(s.label for s in spans(layout))


def prompt_layout(model: str, image: str | None, prompt: str | None) -> TokenLayout:
    """Layout of a real prompt run through ``model``'s processor (no weights are loaded)."""
    from transformers import AutoConfig

    from ..checkpoint import load_processor, open_image, sample_inputs
    from ..layout import TokenLayout

    processor = load_processor(model)
    config = AutoConfig.from_pretrained(model)
    inputs = sample_inputs(processor, open_image(image) if image else None, prompt)
    return TokenLayout.from_inputs(config, input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                   mm_token_type_ids=inputs.get("mm_token_type_ids"))


def _check_output(path: str) -> None:
    from pathlib import Path

    from ..io import check_writable

    check_writable(Path(path).parent, "--output")


def run_show_mask(args: argparse.Namespace) -> int:
    from ..viz import parse_layout, plot_mask

    _check_output(args.output)
    if args.model:
        layout = prompt_layout(args.model, args.image, args.prompt)
        source = f"{args.model} prompt"
    else:
        if args.image or args.prompt:
            raise ValueError("--image and --prompt need --model (the processor that turns them into tokens)")
        spec = args.layout or DEFAULT_LAYOUT
        layout = parse_layout(spec)
        source = f"layout {spec!r}"
    fig = plot_mask(layout, args.policy, merge_policy=args.merge_policy, output=args.output, title=args.title)
    panels = ", ".join(ax.get_title() for ax in fig.axes)
    print(f"wrote {args.output}: {source}, {layout.length} tokens ({_describe(layout)}); panels: {panels}")
    return 0


def parse_policies(specs: list[str], args: argparse.Namespace) -> list[tuple[str, Merge | None]]:
    """``"future"`` / ``"future+kernel"`` -> ``(policy name, Merge or None)``; ``--merge`` fills in the kind.

    Every merge takes the window options its kind reads; an option no merge reads is refused.
    """
    names, kinds = [], []
    for spec in specs:
        name, _, kind = spec.partition("+")
        names.append(get_policy(name).name)
        kinds.append(kind or (args.merge if names[-1] != "causal" else None))
        if kinds[-1] and kinds[-1] not in MERGE_KINDS:
            raise ValueError(f"unknown merge kind {kinds[-1]!r} in {spec!r}; choose one of {MERGE_KINDS}")
    return list(zip(names, merges_from_args(args, kinds), strict=True))


def _model_and_inputs(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from ..checkpoint import load_checkpoint, open_image, sample_inputs
    from ..verify import _tensor_inputs

    if args.model:
        model, processor = load_checkpoint(args.model, dtype=args.dtype, device=args.device)
        name = args.model
    else:
        from ..tiny import tiny_llava

        print("no --model given: using the built-in random-weight tiny LLaVA (futuremask.tiny.tiny_llava); "
              "its attention patterns are meaningless, pass --model for a real checkpoint", file=sys.stderr)
        model, processor = tiny_llava()
        name = "tiny_llava (random weights)"
    inputs = sample_inputs(processor, open_image(args.image) if args.image else None, args.prompt)
    return model, _tensor_inputs(inputs, model), name


def run_attention_map(args: argparse.Namespace) -> int:
    from ..attnmap import attention_map
    from ..viz import plot_attention

    if not 1 <= len(args.policy) <= 2:
        raise ValueError(f"--policy takes one or two policies to compare; got {len(args.policy)}")
    _check_output(args.output)
    runs = parse_policies(args.policy, args)
    model, inputs, name = _model_and_inputs(args)
    maps = [attention_map(model, inputs, policy, merge=merge, layer=args.layer, head=args.head) for policy, merge in runs]
    plot_attention(maps, output=args.output, title=f"{name}: {maps[0].layout.length} prompt tokens")
    print(f"wrote {args.output} ({_describe(maps[0].layout)})")
    print(f"{'policy':<24} {'visual rows: future mass':>25} {'sink mass':>10} {'text rows: future mass':>23} {'sink mass':>10}")
    for amap in maps:
        s = amap.summary()
        label = merge_label(amap.policy, amap.merge)
        print(f"{label:<24} {s['visual_future_mass']:>25.3f} {s['visual_sink_mass']:>10.3f} "
              f"{s['text_future_mass']:>23.3f} {s['text_sink_mass']:>10.3f}")
    return 0
