"""Bar chart of a policy comparison: tasks (and category means) x runs, one panel per model.

Drawn with matplotlib's object API on an Agg canvas, so it never touches pyplot's global state or
needs a display. On each non-causal bar an error bar shows the 95 % paired bootstrap interval of its
change against ``causal`` (:mod:`futuremask.eval.report_stats`), drawn around the bar's top.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..io import write_bytes_atomic
from .paper import PAPER_COLUMNS, PAPER_MODEL, PAPER_SCORES
from .report import (
    RunResult,
    category_means,
    column_labels,
    compare_on_shared,
    comparison,
    load_runs,
    ordered_tasks,
    runs_by_model,
)
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED, Delta

Series = tuple[str, list[float | None], list[Delta | None] | None]  # label, values in %, intervals


def _panel(
    ax,
    title: str,
    groups: list[str],
    series: list[Series],
    n_tasks: int | None = None,
) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (values in percent).

    A series' intervals (changes against causal, fractions) become error bars around its bars' tops.
    ``n_tasks``: number of leading task groups; a dashed line separates them from the means after them.
    """
    n = max(len(series), 1)
    width = 0.8 / n
    top = 0.0
    for k, (label, values, deltas) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        heights = [0.0 if v is None else v for v in values]
        top = max([top, *heights])
        yerr = None
        if deltas is not None:
            nan = float("nan")
            yerr = [[nan if d is None else (d.delta - d.low) * 100 for d in deltas],
                    [nan if d is None else (d.high - d.delta) * 100 for d in deltas]]
            top = max([top, *(h + e for h, e in zip(heights, yerr[1], strict=True) if e == e)])
        ax.bar(xs, heights, width=width, label=label, yerr=yerr, capsize=2 if yerr else 0,
               error_kw={"elinewidth": 0.8})
    if n_tasks is not None and 0 < n_tasks < len(groups):
        ax.axvline(n_tasks - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, max(top, 1.0) * 1.25)  # headroom for the legend
    ax.set_ylabel("score (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(n, 5), loc="upper left")


def _model_series(runs: list[RunResult], resamples: int, seed: int) -> tuple[list[str], list[Series], int]:
    labels = column_labels(runs)
    found = comparison(runs, resamples, seed)
    runs, _ = compare_on_shared(runs)  # the bars show what the table shows: scores on shared samples
    tasks = ordered_tasks(set().union(*(run.scores for run in runs)))
    means = category_means(runs)
    groups = tasks + [f"mean: {name}" for name in means]
    series: list[Series] = []
    for col, (run, label) in enumerate(zip(runs, labels, strict=True)):
        values = [run.scores[t][1] * 100 if t in run.scores else None for t in tasks]
        values += [vals[col] * 100 for _, vals in means.values()]
        deltas = None
        if found is not None and run.name != found.baseline:
            deltas = [found.tasks.get(t, {}).get(run.name) for t in tasks]
            deltas += [found.categories.get(name, {}).get(run.name) for name in means]
        series.append((label, values, deltas))
    return groups, series, len(tasks)


def plot_report(
    outputs_dir: str | os.PathLike,
    path: str | os.PathLike,
    paper: bool = False,
    dpi: int = 120,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Write a PNG bar chart of every scored run under ``outputs_dir`` to ``path`` (atomically).

    Args:
        outputs_dir: folder holding ``<run>/result.json`` (+ ``run.json``).
        path: the PNG to write.
        paper: add a panel with the paper's LLaVA-1.5-7B numbers.
        dpi: resolution of the PNG.
        resamples, seed: of the bootstrap intervals behind the error bars.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [
        (f"{model or 'unknown model'} (error bars: 95% interval of the change against causal)",
         *_model_series(model_runs, resamples, seed))
        for model, model_runs in runs_by_model(load_runs(outputs_dir)).items()
    ]
    if paper:
        groups = [column.label for column in PAPER_COLUMNS]
        series = [(p, [s[g] * 100 for g in groups], None) for p, s in PAPER_SCORES.items()]
        panels.append((f"paper: {PAPER_MODEL}", groups, series, None))

    width = max(6.0, 0.45 * max(len(panel[1]) for panel in panels) + 2.0)
    fig = Figure(figsize=(width, 3.6 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        _panel(ax, *panel)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)


__all__ = ["plot_report"]
