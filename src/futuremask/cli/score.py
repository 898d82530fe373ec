"""``futuremask score`` and ``futuremask report``: official MileBench scoring and policy comparison.

futuremask score --data-dir data/MileBench --result-dir outputs/<run> [--tasks T1 T2 ...] [--adv]
futuremask report outputs/ [--paper] [--output report.md] [--plot report.png | --no-plot] [--resamples N] [--seed S]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``score`` and ``report`` sub-commands."""
    p = sub.add_parser(
        "score",
        help="score existing <Task>/pred.json files with MileBench's official rules",
        description="Score <result-dir>/<Task>/pred.json against <data-dir>/<Task>/<Task>.json and write "
        "eval.json, eval_score.json, pred_with_extracted.json (multi-choice) per task plus "
        "result.json / result.csv in the result directory.",
    )
    p.add_argument("--data-dir", required=True, help="MileBench-format data root")
    p.add_argument("--result-dir", required=True, help="run folder, e.g. outputs/<run>")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        help="tasks and/or groups temporal, semantic, diagnostic, all (default: every <Task>/pred.json)",
    )
    p.add_argument("--adv", action="store_true", help="score against the <Task>-adv.json variants")
    p.set_defaults(func=run_score)

    r = sub.add_parser(
        "report",
        help="compare scored runs: Markdown table (tasks x policies) and bar chart",
        description="Read every <outputs>/<run>/result.json and run.json; print and write a Markdown table "
        "with the best policy per task in bold, deltas to causal and per-category means, the changes against causal "
        "with 95%% paired bootstrap intervals (report.json holds them too), plus a PNG chart with error bars.",
    )
    r.add_argument("outputs_dir", help="folder of run folders, e.g. outputs/")
    r.add_argument("--paper", action="store_true", help="add the paper's LLaVA-1.5-7B numbers")
    r.add_argument("--output", default=None, help="Markdown file (default: <outputs_dir>/report.md)")
    r.add_argument("--plot", default=None, help="PNG bar chart (default: <outputs_dir>/report.png)")
    r.add_argument("--no-plot", action="store_true", help="do not draw the chart")
    r.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples per interval (default 10000)")
    r.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    r.set_defaults(func=run_report)


def run_score(args: argparse.Namespace) -> int:
    """Score a run folder and print one line per task."""
    from ..eval.scoring import score_run
    from ..eval.summary import headline_metric
    from ..io import check_writable

    check_writable(args.result_dir, "--result-dir")
    summary = score_run(args.data_dir, args.result_dir, args.tasks, adv=args.adv)
    for run, categories in summary.items():
        for category, tasks in categories.items():
            for task, eval_result in tasks.items():
                headline = headline_metric(eval_result) if eval_result else None
                if headline is not None:
                    metric, value = headline
                    print(f"{run}  {category:<18}  {task:<24}  {metric:<9}  {value * 100:6.2f}")
    print(f"wrote {Path(args.result_dir) / 'result.json'} and result.csv")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """Print the Markdown report and write it (and the chart) to disk."""
    import json

    from ..eval.report import build_report, report_json
    from ..io import check_writable, write_text_atomic

    if args.resamples < 1:
        raise ValueError(f"--resamples must be at least 1, got {args.resamples}")
    stats = {"resamples": args.resamples, "seed": args.seed}
    output = Path(args.output) if args.output else Path(args.outputs_dir) / "report.md"
    plot = Path(args.plot) if args.plot else Path(args.outputs_dir) / "report.png"
    check_writable(output.parent, "--output")
    if not args.no_plot:
        check_writable(plot.parent, "--plot")
    text = build_report(args.outputs_dir, paper=args.paper, **stats)
    print(text)
    write_text_atomic(output, text)
    data = output.with_suffix(".json")
    write_text_atomic(data, json.dumps(report_json(args.outputs_dir, **stats), indent=2))
    print(f"wrote {output} and {data}")
    if not args.no_plot:
        from ..eval.report_plot import plot_report

        plot_report(args.outputs_dir, plot, paper=args.paper, **stats)
        print(f"wrote {plot}")
    return 0


__all__ = ["register", "run_report", "run_score"]
