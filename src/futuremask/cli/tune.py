"""``futuremask tune``: pick a policy per task on dev samples, measure the pick on held-out samples.

futuremask tune --data-dir D --model M --policy future future_v2v mma [--merge none kernel] \\
    --dev-fraction 0.5 --seed 0 --output-dir outputs/tune

Writes ``split.json``, ``policy_map.json`` (run it with ``futuremask eval --policy-map``), ``tune.json``
and ``tune.md`` into the output folder; the procedure and the choice rule are in
:mod:`futuremask.eval.tune`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..names import PAPER_POLICIES
from .eval import add_run_arguments
from .options import add_merge_options, add_policy_option, merges_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``tune`` sub-command."""
    p = sub.add_parser(
        "tune",
        help="choose a mask policy per task on dev samples, then score the choice on held-out samples",
        description="Split every task into dev and held-out samples, run every candidate policy on dev, keep per "
                    "task the best candidate whose 95%% paired bootstrap interval against causal lies above 0 "
                    "(else causal), then run the chosen map, causal and the best single policy on held-out only.",
    )
    add_policy_option(p, default=None, help=f"candidate policies (default: {' '.join(PAPER_POLICIES)}); causal "
                      "is always the baseline")
    add_merge_options(p, several=True, default=["none"],
                      help="merge kinds to try with every non-causal policy (default: none)")
    p.add_argument("--dev-fraction", type=float, default=0.5, help="share of each task's samples used to choose")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the bootstrap")
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples per interval")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import check_device, check_model_source
    from ..eval.data import check_adv_files, load_tasks
    from ..eval.runner import RunConfig
    from ..eval.tune import candidates, split_ids, tune
    from ..io import check_writable
    from ..layers import parse_layers
    from ..policies import get_policy
    from .eval import load_model

    if not args.data_dir or not args.model:
        raise ValueError("futuremask tune needs --data-dir and --model")
    check_model_source(args.model)
    check_device(args.device)
    check_writable(args.output_dir)
    if args.resamples < 1:
        raise ValueError(f"--resamples must be at least 1, got {args.resamples}")
    if args.layers:
        parse_layers(args.layers)
    policies = [get_policy(p).name for p in (args.policy or PAPER_POLICIES)]
    cands = candidates(policies, merges_from_args(args))
    if len(cands) < 2:
        raise ValueError("give at least one candidate policy besides causal (--policy future mma ...)")
    data_dir = Path(args.data_dir)
    tasks = load_tasks(data_dir, args.tasks, limit=args.limit)  # generation reads <Task>.json, as in eval
    if args.adv:
        check_adv_files(data_dir, tasks)
    for task in tasks:  # a split that cannot be made fails before the model loads
        split_ids(task, args.dev_fraction, args.seed)
    config = RunConfig(  # validates the numbers
        model=args.model, policy="causal", layers=args.layers, backend=args.backend,
        max_new_tokens=512 if args.max_new_tokens is None else args.max_new_tokens,
        max_context_len=args.max_context_len, tokens_per_image=args.tokens_per_image, adv=args.adv,
        batch_size=1 if args.batch_size is None else args.batch_size,
        progress=not args.no_progress,
    )
    model, processor = load_model(args.model, args.dtype, args.device)
    out = Path(args.output_dir)
    tune(model, processor, tasks, data_dir, cands, out, config, dev_fraction=args.dev_fraction, seed=args.seed,
         resamples=args.resamples)
    print((out / "tune.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'policy_map.json'}, {out / 'split.json'}, {out / 'tune.json'} and {out / 'tune.md'}")
    return 0


__all__ = ["register", "run"]
