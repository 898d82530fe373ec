"""``futuremask bench``: latency and memory of every policy (and merge) against ``causal``."""

from __future__ import annotations

import argparse

from ..bench.shapes import SyntheticSize
from ..names import BENCH_POLICIES
from .options import (
    add_backend_option,
    add_merge_options,
    add_model_options,
    add_option,
    add_policy_option,
    merges_from_args,
)

_SIZE = SyntheticSize()

BENCH_DEFAULTS = {"policy": BENCH_POLICIES, "merge": ("none", "kernel")}
"""What ``--policy`` and ``--merge`` default to for the prefill/decode bench."""
THROUGHPUT_DEFAULTS = {"policy": ("causal", "future"), "merge": ("none",)}
"""What they default to with ``--eval-throughput`` (no merge, so a window option alone is refused there)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="prefill time, decode ms/token and peak memory of each policy, as ratios to causal",
        description=(
            "Measure every policy (with and without merge) on one synthetic multimodal prompt, interleaved "
            "and repeated in one run; print medians and ratios to causal, optionally write JSON and a PNG."
        ),
    )
    m = p.add_argument_group("model")
    add_model_options(m, default="synthetic", help="'synthetic' (random weights) or a hub id / local path")
    add_option(m, "--hidden-size", "--hidden", type=int, default=_SIZE.hidden, help="synthetic: hidden size")
    add_option(m, "--num-layers", "--layers", type=int, default=_SIZE.layers, help="synthetic: decoder layers")
    m.add_argument("--heads", type=int, default=_SIZE.heads, help="synthetic: attention heads")
    m.add_argument("--kv-heads", type=int, default=_SIZE.kv_heads, help="synthetic: key/value heads")
    m.add_argument("--intermediate", type=int, default=None, help="synthetic: MLP size (default 8/3 hidden)")
    m.add_argument("--vocab", type=int, default=_SIZE.vocab, help="synthetic: vocabulary size")
    q = p.add_argument_group("prompt")
    q.add_argument("--images", type=int, default=2)
    q.add_argument("--tokens-per-image", type=int, default=576)
    q.add_argument("--text-tokens", type=int, default=1152)
    add_option(q, "--max-new-tokens", "--new-tokens", type=int, default=16,
               help="tokens to decode, exactly this many (>= 2; default 16)")
    add_option(q, "--batch-size", "--batch", type=int, default=1, help="prompts per forward (default 1)")
    r = p.add_argument_group("run")
    add_policy_option(r, default=None, old=["--policies"],
                      help=f"policies to measure (default: {' '.join(BENCH_POLICIES)}; "
                           f"with --eval-throughput: {' '.join(THROUGHPUT_DEFAULTS['policy'])})")
    add_merge_options(r, several=True,
                      help=f"merge kinds to measure (none = the policy's mask itself; default: "
                           f"{' '.join(BENCH_DEFAULTS['merge'])}; with --eval-throughput: "
                           f"{' '.join(THROUGHPUT_DEFAULTS['merge'])})")
    r.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all variants")
    add_backend_option(r)
    add_option(r, "--no-attention-bench", "--no-kernel-bench", action="store_true",
               help="skip the one-layer attention timing")
    r.add_argument(
        "--against",
        choices=("dense-mask",),
        default=None,
        help="dense-mask: time fm.apply's prompt pass against the stock model given fm.build_mask's 4-D mask",
    )
    r.add_argument(
        "--eval-throughput",
        nargs="*",
        type=int,
        default=None,
        metavar="BATCH",
        help="samples/s of `futuremask eval --demo` at these batch sizes (default 1 8), predictions compared",
    )
    r.add_argument(
        "--clock",
        default="auto",
        choices=("auto", "cpu", "wall"),
        help="auto: process CPU time on CPU (robust on a shared machine), wall time on CUDA",
    )
    r.add_argument(
        "--no-exact-rss",
        action="store_true",
        help="leave glibc's allocator as it is (peak RSS then includes memory it keeps cached)",
    )
    o = p.add_argument_group("output")
    add_option(o, "--output", "--json", default=None, help="write the records to this JSON file")
    o.add_argument("--plot", dest="plot_path", nargs="?", const="bench.png", default=None,
                   help="write a PNG of the ratios (default path bench.png; none without --plot)")
    o.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)

    r = sub.add_parser(
        "bench-report",
        help="print the table of a saved `futuremask bench --output RUN.json`",
        description="Read the records `futuremask bench --output RUN.json` wrote and print their table "
        "(plain text, or Markdown as in BENCHMARKS.md).",
    )
    r.add_argument("records", metavar="RUN.json", help="records file written by `futuremask bench --output`")
    r.add_argument("--markdown", action="store_true", help="a Markdown table (as in BENCHMARKS.md)")
    r.set_defaults(func=run_report)


def _fill_defaults(args: argparse.Namespace) -> None:
    """``--policy`` and ``--merge`` not given take the defaults of the mode (what is given is kept as given)."""
    defaults = THROUGHPUT_DEFAULTS if args.eval_throughput is not None else BENCH_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, list(value))


def _check_args(args: argparse.Namespace) -> None:
    """Every number, path and device of the command line, before a model is built or loaded."""
    from pathlib import Path

    from ..checkpoint import check_device, check_model_source
    from ..io import check_writable

    least = {"repeats": 1, "batch_size": 1, "images": 0, "tokens_per_image": 1, "text_tokens": 1, "max_new_tokens": 2,
             "hidden_size": 1, "num_layers": 1, "heads": 1, "kv_heads": 1, "vocab": 8}
    for name, low in least.items():
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.intermediate is not None and args.intermediate < 1:
        raise ValueError(f"--intermediate must be at least 1, got {args.intermediate}")
    if args.model != "synthetic":
        check_model_source(args.model)
    check_device(args.device)
    merges_from_args(args)  # window options without a merge are refused here
    for flag, path in (("--output", args.output), ("--plot", args.plot_path)):
        if path:
            check_writable(Path(path).parent, flag)


def run(args: argparse.Namespace) -> int:
    from ..bench.api import bench
    from ..bench.report import table
    from ..checkpoint import resolve_device

    _fill_defaults(args)
    _check_args(args)
    args.device = resolve_device(args.device)
    if args.eval_throughput is not None:
        return _throughput(args)
    size = SyntheticSize(
        hidden=args.hidden_size,
        layers=args.num_layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        vocab=args.vocab,
    )
    if args.against:
        return _against(args, size)
    records = bench(
        args.model,
        size=size,
        images=args.images,
        tokens_per_image=args.tokens_per_image,
        text_tokens=args.text_tokens,
        batch=args.batch_size,
        new_tokens=args.max_new_tokens,
        policies=args.policy,
        merges=merges_from_args(args),
        repeats=args.repeats,
        backend=args.backend,
        kernel_bench=not args.no_attention_bench,
        clock=args.clock,
        exact_rss=not args.no_exact_rss,
        dtype=args.dtype,
        device=args.device,
        json_path=args.output,
        plot_path=args.plot_path or None,
        progress=not args.no_progress,
    )
    first = records[0]
    print(
        f"{first['model']} ({first['params_m']}M params, {first['dtype']}, {first['threads']} threads): "
        f"{first['prompt_tokens']} prompt tokens ({first['visual_tokens']} visual) x batch {first['batch']}, "
        f"{first['new_tokens']} new tokens, median of {first['repeats']} interleaved rounds (± half range), "
        f"{first['clock']} clock"
    )
    print(table(records))
    if args.output:
        print(f"records written to {args.output}")
    if args.plot_path:
        print(f"plot written to {args.plot_path}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Print the table of a saved run."""
    from ..bench.report import markdown_table, table
    from ..io import read_json

    records = read_json(args.records, list, "benchmark records file")
    print(markdown_table(records) if args.markdown else table(records))
    return 0


def _write(records: list[dict], path: str | None) -> None:
    if path:
        from ..bench.report import write_json

        write_json(path, records)
        print(f"records written to {path}")


def _against(args: argparse.Namespace, size: SyntheticSize) -> int:
    from ..bench.against import against_dense_mask, against_table
    from ..bench.api import load_model
    from ..bench.synthetic import PromptShape, synthetic_prompt

    model = load_model(args.model, size=size, dtype=args.dtype, device=args.device)
    shape = PromptShape(args.images, args.tokens_per_image, args.text_tokens, args.batch_size)
    inputs = {k: v.to(args.device) for k, v in synthetic_prompt(model.config, shape).items()}
    clock = args.clock if args.clock != "auto" else ("wall" if args.device.startswith("cuda") else "cpu")
    policies = [p for p in args.policy if p not in ("causal", "original")] or ["future"]
    records = against_dense_mask(model, inputs, policies, repeats=args.repeats, clock=clock,
                                 exact_rss=not args.no_exact_rss)
    print(f"{shape.length} prompt tokens, median of {args.repeats} rounds, {clock} clock; ratio = fm.apply / by hand")
    print(against_table(records))
    _write(records, args.output)
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from ..bench.throughput import eval_throughput, throughput_table

    sizes = args.eval_throughput or [1, 8]
    if any(b < 1 for b in sizes):
        raise ValueError("--eval-throughput batch sizes must be >= 1")
    clock = args.clock if args.clock != "auto" else "cpu"
    records = eval_throughput(sizes, list(dict.fromkeys(args.policy)), merges=merges_from_args(args),
                              repeats=args.repeats, clock=clock)
    print(throughput_table(records))
    _write(records, args.output)
    return 0
