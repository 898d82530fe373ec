"""Run summaries (``result.json`` / ``result.csv``) and the MileBench task taxonomy.

``result.json`` keeps the layout of the official ``score.py``: ``{run: {category: {task: eval.json}}}``
with every MileBench task listed under its category (``{}`` when the task has no ``eval.json``). Tasks
outside MileBench's taxonomy (the procedural demo tasks, for instance) go to an extra ``"Other"``
category. ``result.csv`` has one row per run: ``Model`` then one ``"<Task> (<metric>)"`` column per
scored task, in percent rounded to 2 decimals.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..io import write_text_atomic
from .tasks import CATEGORIES, MILEBENCH_TASKS, OTHER, category_of

NON_SCORE_KEYS = ("image_quantity_level-Accuracy", "image_quantity_level-Result", "Diff-Accuracy")
"""``eval.json`` keys that ``result.csv`` leaves out (as the official ``score.py`` does)."""


def headline_metric(eval_result: dict[str, Any]) -> tuple[str, float] | None:
    """The task's score from its ``eval.json`` dict: ``("Accuracy" or "Rouge-L f", value in [0, 1])``."""
    for key, value in eval_result.items():
        if key not in NON_SCORE_KEYS:
            return key, float(value)
    return None


def summarize_run(result_dir: str | os.PathLike) -> dict[str, Any]:
    """Collect every ``<Task>/eval.json`` under ``result_dir`` into the ``result.json`` layout."""
    result_dir = Path(result_dir)
    evals: dict[str, Any] = {}
    for eval_path in sorted(result_dir.glob("*/eval.json")):
        try:
            evals[eval_path.parent.name] = json.loads(eval_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{eval_path}: not valid JSON ({err}); re-run `futuremask score`") from err
    run: dict[str, Any] = {
        category: {task: evals.get(task, {}) for task in tasks} for category, tasks in CATEGORIES.items()
    }
    others = sorted(task for task in evals if task not in MILEBENCH_TASKS)
    if others:
        run[OTHER] = {task: evals[task] for task in others}
    return {result_dir.resolve().name: run}


def summary_csv(summary: dict[str, Any]) -> str:
    """``result.csv`` text: ``Model`` and ``"<Task> (<metric>)"`` columns, percent with 2 decimals."""
    rows: list[dict[str, Any]] = []
    for model, categories in summary.items():
        row: dict[str, Any] = {"Model": model}
        for tasks in categories.values():
            for task, metrics in tasks.items():
                for metric, value in metrics.items():
                    if metric not in NON_SCORE_KEYS:
                        row[f"{task} ({metric})"] = repr(float(round(value * 100, 2)))
        rows.append(row)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_summary(result_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``result.json`` and ``result.csv`` in ``result_dir`` and return the summary."""
    summary = summarize_run(result_dir)
    write_text_atomic(Path(result_dir) / "result.json", json.dumps(summary, ensure_ascii=False, indent=4))
    write_text_atomic(Path(result_dir) / "result.csv", summary_csv(summary))
    return summary


__all__ = [
    "CATEGORIES",
    "MILEBENCH_TASKS",
    "NON_SCORE_KEYS",
    "OTHER",
    "category_of",
    "headline_metric",
    "summarize_run",
    "summary_csv",
    "write_summary",
]
