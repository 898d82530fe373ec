"""``futuremask train``: supervised fine-tuning under a mask policy (and the policy sweep behind TRAINING.md).

Examples::

    # a tiny LLaVA from scratch on the procedural demo tasks, under modality-mutual attention
    futuremask train --demo --policy mma --steps 4000 --output-dir runs/demo-mma

    # fine-tune an existing checkpoint on MileBench-format data
    futuremask train --model path/to/llava --data-dir path/to/data --policy future --output-dir runs/ft

    # train under several policies, evaluate each under every policy, write sweep.md
    futuremask train --demo --policy causal mma future --eval-demo --output-dir runs/sweep
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ..io import read_json
from ..names import PAPER_POLICIES
from ..policies import accepted_names
from .options import add_backend_option, add_merge_options, add_option, add_policy_option, merge_from_args

DEMO_TRAIN_SEED = 1  # the evaluation demo data (`futuremask eval --demo`) uses seed 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune (or train from scratch) a VLM under a mask policy",
        description="Supervised fine-tuning with labels on the answer only; the prompt pass runs under the "
        "chosen policy and the answer never leaks into visual rows.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", help="MileBench-format training data (<dir>/<Task>/<Task>.json)")
    data.add_argument("--demo", action="store_true", help="train on freshly generated procedural demo tasks")
    data.add_argument("--demo-samples", type=int, default=2000, help="demo samples per task (default 2000)")
    data.add_argument("--demo-seed", type=int, default=DEMO_TRAIN_SEED,
                      help=f"seed of the training demo data (default {DEMO_TRAIN_SEED}; evaluation uses 0)")
    data.add_argument("--tasks", nargs="+", help="task names or groups (default: all)")
    data.add_argument("--limit", type=int, help="first N samples of each task")
    data.add_argument("--max-context-len", type=int, default=4096, help="prompt budget in tokens")

    model = p.add_argument_group("model")
    add_option(model, "--model", "--init", help="checkpoint to fine-tune: a local path or hub id (default: a fresh "
               "tiny LLaVA, see below)")
    model.add_argument("--hidden-size", type=int, default=128)
    add_option(model, "--num-layers", "--layers", type=int, default=4, help="fresh model: decoder layers")
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--kv-heads", type=int, default=2)
    model.add_argument("--vision-hidden-size", type=int, default=64)
    model.add_argument("--patch-size", type=int, default=8,
                       help="fresh model: pixels per side of an image patch; (32 / N)^2 visual tokens per image")
    model.add_argument("--model-seed", type=int, default=0, help="seed of the fresh model's initial weights")

    opt = p.add_argument_group("optimisation")
    add_policy_option(opt, default=["causal"], old=["--policies"],
                      help="mask policy during training (default causal); several names: a policy sweep, one "
                           "model per policy (same init, data, steps), each evaluated (--eval-data-dir/--eval-demo)")
    add_merge_options(opt, help="train with the light merge instead")
    add_backend_option(opt, default="sdpa")
    opt.add_argument("--steps", type=int, default=4000)
    opt.add_argument("--batch-size", type=int, default=16)
    opt.add_argument("--lr", type=float, default=1.5e-3)
    opt.add_argument("--warmup", type=int, default=50)
    opt.add_argument("--seed", type=int, default=0, help="seed of the data order")
    opt.add_argument("--padding-side", default="right", choices=("left", "right"))

    sweep = p.add_argument_group("policy sweep (several --policy names, or an evaluation set)")
    sweep.add_argument("--eval-data-dir", help="evaluation data for the sweep")
    sweep.add_argument("--eval-demo", action="store_true", help="evaluate the sweep on the demo tasks (seed 0)")
    sweep.add_argument("--eval-samples", type=int, default=100, help="demo evaluation samples per task")
    sweep.add_argument("--eval-policies", nargs="+", choices=accepted_names(),
                       default=[*PAPER_POLICIES, "mma"])

    add_option(p, "--output-dir", "--out", required=True, help="output folder (checkpoint, or the sweep's folders)")
    p.set_defaults(func=run)


def _make_model_factory(args: argparse.Namespace, words: list[str]):
    if args.model:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        def load():
            try:
                return AutoModelForImageTextToText.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model)
            except OSError as err:
                raise ValueError(f"--model {args.model}: cannot load it ({str(err).splitlines()[0]}); pass a "
                                 "checkpoint folder, or a hub id that is downloadable or cached") from err

        return load
    from ..tiny import tiny_llava

    def build():
        return tiny_llava(words=words, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.heads,
                          num_kv_heads=args.kv_heads, vision_hidden_size=args.vision_hidden_size,
                          patch_size=args.patch_size, seed=args.model_seed)

    return build


def _vocabulary(data_dir: str, args: argparse.Namespace) -> list[str]:
    """Word list of a fresh model: the demo words, then every other word of the training data."""
    from ..eval.demo import DEMO_WORDS
    from ..tiny import tiny_llava
    from ..train.data import example_words, milebench_examples

    _, processor = tiny_llava(words=list(DEMO_WORDS))  # its chat template and image processor build the prompts
    examples = milebench_examples(data_dir, processor, tasks=args.tasks, limit=args.limit,
                                  max_context_len=args.max_context_len)
    known = processor.tokenizer.get_vocab()
    extra = [w for w in example_words(examples) if w not in known]
    return list(DEMO_WORDS) + extra


def _init_record(init: str | None) -> dict | None:
    """The training record of the checkpoint we start from, when it has one."""
    path = Path(init) / "futuremask_training.json" if init else None
    return read_json(path, dict, "training record") if path is not None and path.is_file() else None


def _check_args(args: argparse.Namespace) -> None:
    """Everything about the command line that can be wrong, before data or model are touched."""
    from ..checkpoint import check_model_source
    from ..io import check_writable
    from ..policies import get_policy

    if bool(args.data_dir) == bool(args.demo):
        raise ValueError("pass exactly one of --data-dir DIR or --demo")
    for flag in ("steps", "batch_size", "demo_samples", "eval_samples"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.model:
        check_model_source(args.model, "--model")
    if args.demo and args.tasks:
        from ..eval.demo import ALL_DEMO_TASKS

        unknown = [t for t in args.tasks if t not in ALL_DEMO_TASKS]
        if unknown:
            raise ValueError(f"--demo --tasks: unknown demo task(s) {unknown}; choose from {list(ALL_DEMO_TASKS)}")
    if args.patch_size < 1 or 32 % args.patch_size:
        raise ValueError(f"--patch-size must divide the 32-pixel demo images, got {args.patch_size}")
    merge_from_args(args)  # window options without a merge are refused here
    check_writable(args.output_dir, "--output-dir")
    for key in ("policy", "eval_policies"):
        if getattr(args, key):
            setattr(args, key, list(dict.fromkeys(get_policy(p).name for p in getattr(args, key))))


def run(args: argparse.Namespace) -> int:
    from ..train.data import milebench_examples
    from ..train.trainer import TrainConfig, train

    _check_args(args)
    with tempfile.TemporaryDirectory(prefix="futuremask-demo-") as scratch:
        data_dir = args.data_dir
        if args.demo:
            from ..eval.demo import generate_demo_data

            data_dir = str(Path(scratch) / "train")
            generate_demo_data(data_dir, samples_per_task=args.demo_samples, seed=args.demo_seed, tasks=args.tasks)
        words = [] if args.model else _vocabulary(data_dir, args)
        make_model = _make_model_factory(args, words)
        model, processor = make_model()
        examples = milebench_examples(data_dir, processor, tasks=args.tasks, limit=args.limit,
                                      max_context_len=args.max_context_len)
        config = TrainConfig(policy=args.policy[0], merge=merge_from_args(args), backend=args.backend, steps=args.steps,
                             batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup,
                             seed=args.seed, padding_side=args.padding_side)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{len(examples)} training examples, model with {n_params / 1e6:.2f}M parameters", flush=True)
        if len(args.policy) == 1 and not (args.eval_data_dir or args.eval_demo):
            record = {"data": data_dir if args.data_dir else f"demo seed {args.demo_seed}, "
                      f"{args.demo_samples} per task", "init": args.model, "init_record": _init_record(args.model)}
            result = train(model, processor, examples, config, output_dir=args.output_dir, record=record)
            step, last = result.losses[-1]
            print(f"trained under {config.policy!r} for {args.steps} steps in {result.seconds:.0f}s "
                  f"(loss {last:.4f} at step {step}); saved to {args.output_dir}")
            return 0
        del model
        if bool(args.eval_data_dir) == bool(args.eval_demo):
            raise ValueError("a sweep (several --policy names) needs exactly one of --eval-data-dir DIR or --eval-demo")
        eval_dir = args.eval_data_dir
        if args.eval_demo:
            from ..eval.demo import generate_demo_data

            eval_dir = str(Path(scratch) / "eval")
            generate_demo_data(eval_dir, samples_per_task=args.eval_samples, seed=0,
                               tasks=args.tasks if args.demo else None)
        from ..train.sweep import run_sweep

        result = run_sweep(make_model, examples, eval_dir, args.output_dir, config, train_policies=args.policy,
                           eval_policies=args.eval_policies)
        print((Path(args.output_dir) / "sweep.md").read_text())
        print(json.dumps({p: r["seconds"] for p, r in result["runs"].items()}), "seconds per training run")
    return 0
