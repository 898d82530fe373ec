"""``futuremask verify``: check the causal contract on a checkpoint and print a pass/fail table."""

from __future__ import annotations

import argparse

from .options import (
    add_backend_option,
    add_merge_options,
    add_model_options,
    add_policy_option,
    merge_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a checkpoint keeps the causal contract under each policy",
        description="Load a checkpoint (AutoModelForImageTextToText + AutoProcessor), run a sample prompt and "
        "print a pass/fail table: causal reproduces the untouched model; generate() equals prefill + causal "
        "decode; text queries never see the future; continuations never reach visual rows; batch and "
        "left-padding invariance. Exits 1 when a check fails.",
    )
    add_model_options(p, required=True, help="checkpoint directory or hub id")
    add_policy_option(p, default=None, help="policies to check besides causal (default: all registered)")
    add_merge_options(p, help="also fold the future into the sink (light variant)")
    p.add_argument("--image", help="image file for the prompt (default: a drawn picture of three shapes)")
    p.add_argument("--prompt", help="question text (default: a sample question)")
    add_backend_option(p)
    p.add_argument("--atol", type=float, help="accepted difference relative to max(1, max |logits|) "
                   "(default 1e-4 in float32, 3e-2 otherwise)")
    p.add_argument("--max-new-tokens", type=int, default=3, help="greedy steps compared (default 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, open_image
    from ..verify import check_settings, format_table, verify

    check_settings(args.atol, args.max_new_tokens)
    merge = merge_from_args(args)  # before the weights load: a window without a merge is refused
    model, processor = load_checkpoint(args.model, dtype=args.dtype, device=args.device)
    image = open_image(args.image) if args.image else None
    results = verify(model, processor, args.policy, merge=merge, image=image, prompt=args.prompt, atol=args.atol,
                     backend=args.backend, max_new_tokens=args.max_new_tokens)
    print(f"futuremask verify: {args.model} ({type(model).__name__}, {_describe(model)})")
    print(format_table(results))
    return 0 if all(r.passed for r in results) else 1


def _describe(model) -> str:
    """``"float32, cpu"``: the dtype and device the weights were loaded with."""
    weight = next(model.parameters())
    return f"{str(weight.dtype).removeprefix('torch.')}, {weight.device}"
