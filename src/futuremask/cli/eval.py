"""``futuremask eval``: run a VLM over MileBench-format data under several mask policies, then score.

Examples::

    futuremask eval --demo --limit 8
    futuremask eval --data-dir data/MileBench --model llava-hf/llava-1.5-7b-hf \\
        --policy causal future future_v2v future_v2t --tasks temporal --batch-size 4
    accelerate launch --num_processes 4 -m futuremask.cli eval --data-dir data/MileBench --model ...
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..names import PAPER_POLICIES
from . import style
from .options import (
    add_backend_option,
    add_merge_options,
    add_model_options,
    add_policy_option,
    merge_from_args,
)

DEMO_POLICIES = (*PAPER_POLICIES, "mma")
DEMO_SAMPLES = 24
DEMO_MAX_NEW_TOKENS = 8


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="generate MileBench predictions under mask policies, score them and print a comparison",
        description="Run a Hugging Face VLM over MileBench-format data once per mask policy, write "
                    "<output-dir>/<model>__<policy>/<Task>/pred.json, score them with the official rules and "
                    "print a tasks x policies table. Interrupted runs resume where they stopped.",
    )
    p.add_argument("--demo", action="store_true",
                   help="offline demo: generate a small benchmark, run every policy with the tiny demo VLM, score")
    add_policy_option(p, default=None,
                      help=f"one or several mask policies (default: {' '.join(PAPER_POLICIES)}; demo: all)")
    add_merge_options(p, aliases=["--compress-future"])
    p.add_argument("--policy-map", default=None, metavar="JSON",
                   help="run each task under its own policy from a policy_map.json ({task: {policy, merge}}, "
                        "as `futuremask tune` writes it) instead of --policy/--merge")
    add_run_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="regenerate instead of resuming existing predictions")
    p.add_argument("--no-score", action="store_true", help="only generate pred.json files")
    style.add_arguments(p)
    p.set_defaults(func=run)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``eval`` and ``tune`` share: data, model, schedule, tasks, generation, device, output."""
    p.add_argument("--data-dir", help="MileBench folder holding <Task>/<Task>.json and <Task>/images/")
    add_model_options(p, help="local path or Hugging Face hub id of a VLM (AutoModelForImageTextToText)")
    add_backend_option(p)
    p.add_argument("--layers", default=None, metavar="LAYERS",
                   help="apply the policy on these text layers only, causal on the others: e.g. 0-15 or 0-7,12 "
                        "(default: all)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="task names and/or groups: temporal, semantic, diagnostic, all (default: all present)")
    p.add_argument("--adv", action="store_true",
                   help="score against the adversarial <Task>-adv.json files (generation reads <Task>.json, as the "
                        "official code does)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples of each task")
    p.add_argument("--batch-size", type=int, default=None, help="samples per generate() call (default 1; demo 8)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 512 (the paper's); demo 8")
    p.add_argument("--max-context-len", type=int, default=None,
                   help="prompt budget for MileBench's left truncation (default: min(4096, model positions))")
    p.add_argument("--tokens-per-image", type=int, default=None,
                   help="tokens counted per image when truncating (default: measured with the processor)")
    p.add_argument("--output-dir", default="outputs",
                   help="runs go to <output-dir>/<model>__<policy>[__merge-<kind>[-k<kernel>][-<pool>][-p<prefix>]] "
                        "(the window options named only when not the defaults)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def load_model(model_id: str, dtype: str = "auto", device: str = "auto"):
    """``(model, processor)`` for a local path or hub id (:func:`futuremask.checkpoint.load_checkpoint`)."""
    from ..checkpoint import load_checkpoint

    return load_checkpoint(model_id, dtype=dtype, device=device)


def load_processor_and_config(model_id: str):
    """``(processor, config)`` of a local path or hub id, without the weights (``--dry-run``)."""
    from transformers import AutoConfig, AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model_id), AutoConfig.from_pretrained(model_id)
    except OSError as err:  # as load_model: no such hub id, offline without a cached copy
        raise ValueError(f"--model {model_id}: cannot load its processor and config ({str(err).splitlines()[0]})"
                         "; pass a checkpoint folder, or a hub id that is downloadable or cached") from err


def _wait_for_demo_data(data_dir: Path, samples: int, timeout_s: float = 600.0) -> None:
    """Ranks > 0 of a sharded demo wait for rank 0's (atomically written) demo task files."""
    import json
    import time

    from ..eval.demo import DEMO_TASKS

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if all(len(json.loads((data_dir / t / f"{t}.json").read_text())["data"]) == samples for t in DEMO_TASKS):
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout_s:.0f}s for rank 0 to write the demo data into {data_dir}")
        time.sleep(0.5)


def _score_and_report(
    data_dir: Path, runs: list[Path], tasks, output_dir: Path, complete: bool, adv: bool = False
) -> None:
    if not complete:
        print("Predictions written. --limit covers only part of the data, and the official scorer needs every "
              "sample, so scoring is skipped (run without --limit, or `futuremask score` on a full run).")
        return
    from ..eval.report import build_report
    from ..eval.scoring import score_run

    for run_dir in runs:
        score_run(data_dir, run_dir, [t.name for t in tasks], adv=adv, progress=False)
    print(build_report(output_dir, runs=runs))


def _check_args(args: argparse.Namespace) -> None:
    """Everything about the command line that can be wrong, before data or model are touched."""
    from ..checkpoint import check_device, check_model_source
    from ..io import check_writable

    if args.demo and args.model:
        raise ValueError("--demo runs the built-in demo VLM; drop --model, or drop --demo and pass --data-dir")
    if args.demo and args.data_dir:
        raise ValueError("--demo generates its own data; drop --data-dir, or drop --demo and pass --model")
    if not args.demo and not (args.data_dir and args.model):
        raise ValueError("futuremask eval needs --data-dir and --model (or --demo for the offline demo)")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    merge_from_args(args)  # window options without a merge are refused here
    if args.model:
        check_model_source(args.model)
    check_device(args.device)
    check_writable(args.output_dir)


def _dry_run(processor, model_config, tasks, data_dir: Path, runs_dir: Path, policies, config) -> int:
    from ..eval.dry_run import write_prompts
    from ..eval.runner import context_len, run_name

    config.max_context_len = context_len(model_config, config)
    if config.rank == 0:
        run_dirs = [runs_dir / run_name(config.model, p, config.merge, config.layers) for p in policies]
        files = write_prompts(processor, model_config, tasks, data_dir, run_dirs, config)
        print(f"wrote {len(files)} prompts.jsonl file(s) under {runs_dir} (no weights loaded, nothing generated)",
              file=sys.stderr)
    return 0


def _policy_map(args: argparse.Namespace):
    """The ``--policy-map`` candidates per task, or None; refused beside --policy/--merge."""
    if args.policy_map is None:
        return None
    if args.policy or args.merge:
        raise ValueError("--policy-map gives each task its policy and merge; drop --policy/--merge")
    from ..eval.tune import read_policy_map

    return read_policy_map(args.policy_map)


def _run_map(model, processor, tasks, policy_map, runs_dir: Path, config, data_dir: Path, no_score: bool) -> int:
    """Run a policy map, score each task in its run folder and print one line per task."""
    from ..eval.scoring import score_run
    from ..eval.summary import headline_metric
    from ..eval.tune import run_policy_map

    folders = run_policy_map(model, processor, tasks, policy_map, runs_dir, config)
    if config.rank != 0 or no_score:
        return 0
    if not all(len(t.samples) == t.total for t in tasks):
        print("Predictions written; --limit covers only part of the data, so scoring is skipped.")
        return 0
    print("| Task | policy | score |\n|---|---|---|")
    total = 0.0
    for task in tasks:
        summary = score_run(data_dir, folders[task.name], [task.name], adv=config.adv, progress=False)
        evals = {t: e for cats in summary.values() for tasks_ in cats.values() for t, e in tasks_.items()}
        metric, value = headline_metric(evals[task.name])
        total += value
        print(f"| {task.name} | {policy_map[task.name].label} | {value * 100:.2f} ({metric}) |")
    print(f"\nmean over {len(tasks)} tasks: {total / len(tasks) * 100:.2f}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..eval.data import check_adv_files, load_tasks
    from ..eval.runner import RunClaim, RunConfig, evaluate, shard_from_env
    from ..layers import parse_layers
    from ..policies import get_policy

    _check_args(args)
    style.check(args)
    rank, world = shard_from_env()
    if world > 1:  # one line per process: the way to see that a launcher really started W of them
        print(f"futuremask eval: process rank {rank} of {world} (samples {rank}, {rank + world}, ... of each task)",
              file=sys.stderr, flush=True)
    output_dir = Path(args.output_dir)
    requested = args.policy or (DEMO_POLICIES if args.demo else PAPER_POLICIES)
    policies = list(dict.fromkeys(get_policy(p).name for p in requested))  # unknown names fail before any work
    policy_map = _policy_map(args)
    if args.layers:
        parse_layers(args.layers)
    if args.demo:
        from ..eval.demo import DEMO_CHECKPOINT, generate_demo_data, load_demo_model

        data_dir = output_dir / "demo-data"
        runs_dir = output_dir / "demo"
        samples = DEMO_SAMPLES if args.limit is None else args.limit
        model_name = "demo-vlm" if DEMO_CHECKPOINT.is_dir() and (DEMO_CHECKPOINT / "config.json").exists() \
            else "tiny-llava-random"
        # one process: always fresh runs; a sharded demo resumes (its data and model are the same each time)
        overwrite, batch_size = world == 1, 8 if args.batch_size is None else args.batch_size
        max_new_tokens = DEMO_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    else:
        data_dir, runs_dir = Path(args.data_dir), output_dir
        model_name = args.model
        overwrite, batch_size = args.overwrite, 1 if args.batch_size is None else args.batch_size
        max_new_tokens = 512 if args.max_new_tokens is None else args.max_new_tokens
    config = RunConfig(  # validates the numbers
        model=model_name, policy=policies[0], merge=merge_from_args(args), layers=args.layers, backend=args.backend,
        max_new_tokens=max_new_tokens,
        max_context_len=args.max_context_len, tokens_per_image=args.tokens_per_image, adv=args.adv and not args.demo,
        batch_size=batch_size, overwrite=overwrite, progress=not args.no_progress and rank == 0, rank=rank,
        world_size=world,
    )
    if args.demo:
        if rank == 0:
            generate_demo_data(data_dir, samples_per_task=samples)
        else:
            _wait_for_demo_data(data_dir, samples)
        tasks = load_tasks(data_dir, args.tasks)
    else:
        # validates before any write; generation reads <Task>.json even with --adv, as the official code
        tasks = load_tasks(data_dir, args.tasks, limit=args.limit, combine=args.combine_images)
        if args.adv:
            check_adv_files(data_dir, tasks)
    # the style options come from the config, read before the weights load (the demo's config names no aspect)
    processor, model_config = (None, None) if args.demo else load_processor_and_config(args.model)
    config = replace(config, **style.run_options(args, model_config))
    if args.dry_run:
        if args.demo:
            model, processor = load_demo_model()
            model_config = model.config
        return _dry_run(processor, model_config, tasks, data_dir, runs_dir, policies, config)

    def load():
        if not args.demo:
            return load_model(args.model, args.dtype, args.device)
        model, processor = load_demo_model()
        return (model if args.device == "auto" else model.to(args.device)), processor

    if policy_map is not None:  # one evaluate (and claim) per candidate of the map, after the model loads
        return _run_map(*load(), tasks, policy_map, runs_dir, config, data_dir, args.no_score)
    with RunClaim(runs_dir, config, policies, tasks) as claim:  # locked and checked before the model loads
        runs = evaluate(*load(), tasks, policies, runs_dir, config, claim)
    if rank != 0:
        return 0
    for run_dir in runs:
        print(f"wrote {run_dir}", file=sys.stderr)
    if not args.no_score:
        complete = all(len(t.samples) == t.total for t in tasks)
        _score_and_report(data_dir, runs, tasks, runs_dir, complete, adv=config.adv)
    return 0
