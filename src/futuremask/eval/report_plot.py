"""Bar chart of a policy comparison: tasks (and category means) x runs, one panel per model.

Drawn with matplotlib's object API on an Agg canvas, so it never touches pyplot's global state or
needs a display.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..io import write_bytes_atomic
from .paper import PAPER_COLUMNS, PAPER_MODEL, PAPER_SCORES
from .report import RunResult, category_means, column_labels, compare_on_shared, load_runs, ordered_tasks


def _panel(
    ax,
    title: str,
    groups: list[str],
    series: list[tuple[str, list[float | None]]],
    n_tasks: int | None = None,
) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series (values in percent).

    ``n_tasks``: number of leading task groups; a dashed line separates them from the means after them.
    """
    n = max(len(series), 1)
    width = 0.8 / n
    top = 0.0
    for k, (label, values) in enumerate(series):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(groups))]
        heights = [0.0 if v is None else v for v in values]
        top = max([top, *heights])
        ax.bar(xs, heights, width=width, label=label)
    if n_tasks is not None and 0 < n_tasks < len(groups):
        ax.axvline(n_tasks - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, max(top, 1.0) * 1.25)  # headroom for the legend
    ax.set_ylabel("score (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(n, 5), loc="upper left")


def _model_series(runs: list[RunResult]) -> tuple[list[str], list[tuple[str, list[float | None]]], int]:
    labels = column_labels(runs)
    runs, _ = compare_on_shared(runs)  # the bars show what the table shows: scores on shared samples
    tasks = ordered_tasks(set().union(*(run.scores for run in runs)))
    means = category_means(runs)
    groups = tasks + [f"mean: {name}" for name in means]
    series = []
    for col, (run, label) in enumerate(zip(runs, labels, strict=True)):
        values = [run.scores[t][1] * 100 if t in run.scores else None for t in tasks]
        values += [vals[col] * 100 for _, vals in means.values()]
        series.append((label, values))
    return groups, series, len(tasks)


def plot_report(
    outputs_dir: str | os.PathLike, path: str | os.PathLike, paper: bool = False, dpi: int = 120
) -> Path:
    """Write a PNG bar chart of every scored run under ``outputs_dir`` to ``path`` (atomically).

    Args:
        outputs_dir: folder holding ``<run>/result.json`` (+ ``run.json``).
        path: the PNG to write.
        paper: add a panel with the paper's LLaVA-1.5-7B numbers.
        dpi: resolution of the PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = load_runs(outputs_dir)
    by_model: dict[str | None, list[RunResult]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    panels = [
        (model or "unknown model", *_model_series(model_runs)) for model, model_runs in by_model.items()
    ]
    if paper:
        groups = [column.label for column in PAPER_COLUMNS]
        series = [(p, [s[g] * 100 for g in groups]) for p, s in PAPER_SCORES.items()]
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
