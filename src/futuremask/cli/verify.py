"""``futuremask verify``: check the causal contract on a checkpoint and print a pass/fail table."""

from __future__ import annotations

import argparse

from ..names import BACKENDS, DTYPES, MERGE_KINDS, POOLS
from ..policies import accepted_names, policy_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a checkpoint keeps the causal contract under each policy",
        description="Load a checkpoint (AutoModelForImageTextToText + AutoProcessor), run a sample prompt and "
        "print a pass/fail table: causal reproduces the untouched model; generate() equals prefill + causal "
        "decode; text queries never see the future; continuations never reach visual rows; batch and "
        "left-padding invariance. Exits 1 when a check fails.",
    )
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--policy", nargs="+", choices=accepted_names(), metavar="NAME",
                   help=f"policies to check besides causal (default: all of {', '.join(policy_names())})")
    p.add_argument("--merge", choices=MERGE_KINDS, help="also fold the future into the sink (light variant)")
    p.add_argument("--kernel", type=int, default=3, help="merge pooling window (default 3)")
    p.add_argument("--pool", choices=POOLS, default="max", help="merge pooling (default max)")
    p.add_argument("--image", help="image file for the prompt (default: a drawn picture of three shapes)")
    p.add_argument("--prompt", help="question text (default: a sample question)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weights dtype (default float32, the most exact comparison)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--atol", type=float, help="accepted difference relative to max(1, max |logits|) "
                   "(default 1e-4 in float32, 3e-2 otherwise)")
    p.add_argument("--max-new-tokens", type=int, default=3, help="greedy steps compared (default 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, open_image
    from ..merge import Merge
    from ..verify import check_settings, format_table, verify

    check_settings(args.atol, args.max_new_tokens)
    model, processor = load_checkpoint(args.model, dtype=args.dtype, device=args.device)
    merge = Merge(kind=args.merge, kernel=args.kernel, pool=args.pool) if args.merge else None
    image = open_image(args.image) if args.image else None
    results = verify(model, processor, args.policy, merge=merge, image=image, prompt=args.prompt, atol=args.atol,
                     backend=args.backend, max_new_tokens=args.max_new_tokens)
    print(f"futuremask verify: {args.model} ({type(model).__name__}, {args.dtype}, {next(model.parameters()).device})")
    print(format_table(results))
    return 0 if all(r.passed for r in results) else 1
