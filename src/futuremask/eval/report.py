"""Policy comparison reports over scored runs: a Markdown table, per-category means, a bar chart.

Input: an outputs folder whose sub-folders are runs scored by :func:`futuremask.eval.scoring.score_run`::

    <outputs_dir>/<run>/result.json   {run: {category: {task: eval.json}}}
    <outputs_dir>/<run>/run.json      {"model": ..., "policy": ..., "merge": null | ..., "backend": ...}

Each run is a column (its policy, with ``+merge`` when a merge was used). Scores are shown in percent
with 2 decimals; per task the best column is in bold and every non-baseline column shows its change
against the ``causal`` run of the same model (no merge), e.g. ``**47.50** (+2.50)``. Category means
average each run over the tasks that *every* run of that model has scored, so the columns compare
like with like. Runs of different models get separate sections.

Runs of one model are compared on the samples they share (:mod:`futuremask.eval.shared`): when the
runs of a task hold different samples (another ``--limit``, other data), every column of that task
is the mean of the per-sample scores in ``eval_score.json`` over the shared samples only (ROUGE-L
rounded to 3 decimals there, as the official file holds it), the table says so under it, and the
run list marks the runs whose samples differ.

Under the scores, a second table gives every change against ``causal`` with its 95 % paired bootstrap
interval over the same shared samples (McNemar's exact p-value on accuracy tasks) and marks with
``*`` the changes whose interval excludes 0 (:mod:`futuremask.eval.report_stats`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..io import read_json
from ..policies import policy_aliases, policy_names
from .paper import PAPER_COLUMNS, PAPER_MODEL, PAPER_SCORES, PAPER_SOURCE, paper_row_label
from .report_stats import Comparison, compare, delta_cell
from .shared import SampleKey, sample_scores, shared_samples
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from .summary import CATEGORIES, OTHER, category_of, headline_metric

CATEGORY_ORDER: tuple[str, ...] = (*CATEGORIES, OTHER)
_METRIC_SHORT = {"Accuracy": "Acc", "Rouge-L f": "ROUGE-L"}


@dataclass
class RunResult:
    """One scored run: its identity (from ``run.json``) and ``{task: (metric, score in [0, 1])}``."""

    name: str
    model: str | None = None
    policy: str | None = None
    merge: str | None = None
    backend: str | None = None
    layers: str | None = None
    scores: dict[str, tuple[str, float]] = field(default_factory=dict)
    samples: dict[str, dict[SampleKey, float]] = field(default_factory=dict)  # task -> per-sample scores

    @property
    def canonical_policy(self) -> str | None:
        return policy_aliases().get(self.policy, self.policy) if self.policy else None

    @property
    def is_baseline(self) -> bool:
        """A plain causal run (no merge, every layer): the reference for the deltas."""
        return self.canonical_policy == "causal" and not self.merge and not self.layers

    @property
    def label(self) -> str:
        """Column label: ``policy``, ``policy+merge``, ``policy@0-15`` (a layer schedule); else the run name."""
        if not self.policy:
            return self.name
        label = f"{self.policy}+{self.merge}" if self.merge else self.policy
        return f"{label}@{self.layers}" if self.layers else label


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """Read one run folder's ``result.json`` (required), ``run.json`` and ``<Task>/eval_score.json`` (optional)."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "result.json", dict, "run summary (result.json)")
    if not summary:
        raise ValueError(f"{run_dir / 'result.json'}: expected {{run: {{category: {{task: scores}}}}}}; "
                         "re-run `futuremask score`")
    categories = summary.get(run_dir.name, next(iter(summary.values())))
    run = RunResult(name=run_dir.name)
    meta_path = run_dir / "run.json"
    meta = read_json(meta_path, dict, "run settings file (run.json)") if meta_path.is_file() else {}
    run.model, run.policy = meta.get("model"), meta.get("policy")
    run.merge, run.backend, run.layers = meta.get("merge"), meta.get("backend"), meta.get("layers")
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    for tasks in categories.values():
        for task, eval_result in tasks.items():
            headline = headline_metric(eval_result) if eval_result else None
            if headline is not None:
                run.scores[task] = headline
                per_sample = run_dir / task / "eval_score.json"
                if per_sample.is_file():
                    fingerprints = (data.get(task) or {}).get("samples")
                    records = read_json(per_sample, list, "per-sample scores (eval_score.json)")
                    run.samples[task] = sample_scores(records, fingerprints)
    return run


def compare_on_shared(runs: list[RunResult]) -> tuple[list[RunResult], dict[str, tuple[int, list[int]]]]:
    """Copies of ``runs`` whose task scores are taken over the samples all runs of the task share.

    A task whose runs hold the same samples keeps its ``eval.json`` score. Returns the copies and, for
    every task whose samples differ, ``(number shared, [samples per run that has the task])``.
    """
    out = [replace(run, scores=dict(run.scores)) for run in runs]
    notes: dict[str, tuple[int, list[int]]] = {}
    for task in sorted(set().union(*(run.scores for run in runs))):
        having = [(copy, run) for copy, run in zip(out, runs, strict=True) if task in run.scores]
        if not all(task in run.samples for _, run in having):
            continue  # a run without per-sample scores: nothing to pair on
        keys = shared_samples([run.samples[task] for _, run in having])
        counts = [len(run.samples[task]) for _, run in having]
        if all(count == len(keys) for count in counts):
            continue
        notes[task] = (len(keys), counts)
        for copy, run in having:
            if keys:
                copy.scores[task] = (run.scores[task][0], sum(run.samples[task][k] for k in keys) / len(keys))
            else:
                del copy.scores[task]
    return out, notes


def _sort_key(run: RunResult) -> tuple:
    policy = run.canonical_policy or ""
    order = policy_names()
    rank = order.index(policy) if policy in order else len(order)
    return (run.model or "", rank, policy, run.merge or "", run.backend or "", run.name)


def load_runs(outputs_dir: str | os.PathLike, runs: list[os.PathLike] | None = None) -> list[RunResult]:
    """Every run folder under ``outputs_dir`` that has a ``result.json`` (only ``runs`` when given), sorted."""
    outputs_dir = Path(outputs_dir)
    if not outputs_dir.is_dir():
        raise FileNotFoundError(f"outputs directory {outputs_dir} does not exist")
    paths = sorted(outputs_dir.glob("*/result.json")) if runs is None else [Path(r) / "result.json" for r in runs]
    runs = [load_run(path.parent) for path in paths if path.is_file()]
    if not runs:
        raise FileNotFoundError(
            f"no scored runs under {outputs_dir} (no <run>/result.json); "
            "score them first: futuremask score --data-dir DIR --result-dir <outputs>/<run>"
        )
    return sorted(runs, key=_sort_key)


def column_labels(runs: list[RunResult]) -> list[str]:
    """Column label per run; runs whose labels collide are named by their folder instead."""
    labels = [run.label for run in runs]
    return [run.name if labels.count(label) > 1 else label for run, label in zip(runs, labels, strict=True)]


def ordered_tasks(tasks: set[str]) -> list[str]:
    """MileBench tasks in the official category order, then the other tasks alphabetically."""
    known = [task for category in CATEGORIES.values() for task in category if task in tasks]
    return known + sorted(task for task in tasks if category_of(task) == OTHER)


def _pct(value: float) -> float:
    return round(value * 100, 2)


def _table(
    header: list[str], rows: list[tuple[list[str], list[float | None]]], baseline: int | None
) -> list[str]:
    """Markdown table; ``rows`` are (leading cells, fractions per column); bold best, delta to baseline.

    Ties for the best value are all bold; a row where every value is the same has no bold cell.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lead, values in rows:
        shown = [None if v is None else _pct(v) for v in values]
        present = [v for v in shown if v is not None]
        best = max(present) if len(set(present)) > 1 else None  # nothing is "best" when all tie
        cells = []
        for col, value in enumerate(shown):
            if value is None:
                cells.append("–")
                continue
            cell = f"**{value:.2f}**" if value == best else f"{value:.2f}"
            base = shown[baseline] if baseline is not None else None
            if base is not None and col != baseline:
                cell += f" ({round(value - base, 2) + 0.0:+.2f})"
            cells.append(cell)
        lines.append("| " + " | ".join(lead + cells) + " |")
    return lines


def category_tasks(runs: list[RunResult]) -> dict[str, list[str]]:
    """``{category: tasks}`` over the tasks every run has scored, then ``"All"``; empty categories left out."""
    common = set.intersection(*(set(run.scores) for run in runs))
    groups = [(cat, sorted(t for t in common if category_of(t) == cat)) for cat in CATEGORY_ORDER]
    return {name: tasks for name, tasks in [*groups, ("All", sorted(common))] if tasks}


def category_means(runs: list[RunResult]) -> dict[str, tuple[int, list[float]]]:
    """``{category: (number of tasks, mean per run)}`` over the tasks every run has scored.

    Accuracy and ROUGE-L F are averaged together, as MileBench's category scores do. Categories with no
    common task are left out; ``"All"`` averages over every common task.
    """
    return {
        name: (len(tasks), [sum(run.scores[t][1] for t in tasks) / len(tasks) for run in runs])
        for name, tasks in category_tasks(runs).items()
    }


def comparison(
    runs: list[RunResult], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> Comparison | None:
    """Changes of one model's runs against its plain ``causal`` run, with intervals; None without one."""
    baseline = next((run for run in runs if run.is_baseline), None)
    if baseline is None:
        return None
    return compare(runs, baseline, category_tasks(runs), resamples=resamples, seed=seed)


def runs_by_model(runs: list[RunResult]) -> dict[str | None, list[RunResult]]:
    """Runs grouped by model, in the order of ``runs``."""
    out: dict[str | None, list[RunResult]] = {}
    for run in runs:
        out.setdefault(run.model, []).append(run)
    return out


def _interval_table(runs: list[RunResult], labels: list[str], found: Comparison) -> list[str]:
    others = [(run, label) for run, label in zip(runs, labels, strict=True) if run.name != found.baseline]
    lines = [
        "", f"Change against `causal` in points, 95% paired bootstrap interval over the shared samples "
        f"({found.resamples} resamples, seed {found.seed}); * = the interval excludes 0; p = McNemar's exact test "
        "(accuracy tasks); category rows resample within each task:", "",
        "| Task | " + " | ".join(label for _, label in others) + " |", "|---|" + "---|" * len(others),
    ]
    rows = [(task, found.tasks[task]) for task in ordered_tasks(set(found.tasks))]
    rows += [(f"mean: {name}", row) for name, row in found.categories.items()]
    for name, row in rows:
        lines.append(f"| {name} | " + " | ".join(delta_cell(row.get(run.name)) for run, _ in others) + " |")
    return lines


def _model_section(model: str | None, runs: list[RunResult], found: Comparison | None) -> list[str]:
    labels = column_labels(runs)
    runs, notes = compare_on_shared(runs)
    baseline = next((i for i, run in enumerate(runs) if run.is_baseline), None)
    lines = [f"## {model or 'unknown model'}", ""]
    tasks = ordered_tasks(set().union(*(run.scores for run in runs)))
    rows = []
    for task in tasks:
        metrics = {run.scores[task][0] for run in runs if task in run.scores}
        metric = "/".join(sorted(_METRIC_SHORT.get(m, m) for m in metrics))
        rows.append(([task, metric], [run.scores[task][1] if task in run.scores else None for run in runs]))
    lines += _table(["Task", "Metric", *labels], rows, baseline)
    for task, (shared, counts) in notes.items():
        lines += ["", f"_{task}: the runs hold different samples ({', '.join(map(str, counts))}); every column "
                  f"is scored on the {shared} they share._"]
    means = category_means(runs)
    if means:
        lines += ["", "Category means (tasks scored by every run):", ""]
        mean_rows = [([name, str(count)], list(values)) for name, (count, values) in means.items()]
        lines += _table(["Category", "Tasks", *labels], mean_rows, baseline)
    if baseline is None:
        lines += ["", "_No plain `causal` run for this model: no deltas shown._"]
    elif found is not None and found.tasks:
        lines += _interval_table(runs, labels, found)
    return lines


def _paper_section() -> list[str]:
    policies = list(PAPER_SCORES)
    lines = [f"## Paper reference: {PAPER_MODEL} ({PAPER_SOURCE})", ""]
    rows = []
    for column in PAPER_COLUMNS:
        lead = [paper_row_label(column), _METRIC_SHORT[column.metric]]
        rows.append((lead, [PAPER_SCORES[p][column.label] for p in policies]))
    lines += _table(["Task", "Metric", *policies], rows, policies.index("causal"))
    return lines


def _differing_tasks(run: RunResult, runs: list[RunResult]) -> list[str]:
    """Tasks where ``run`` holds samples that some other run of the task does not (or lacks some it has)."""
    return [task for task, mine in run.samples.items()
            if any(task in other.samples and set(other.samples[task]) != set(mine) for other in runs)]


def report_json(
    outputs_dir: str | os.PathLike, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
    runs: list[os.PathLike] | None = None,
) -> dict:
    """``report.json``: per model, its runs' scores and every change against causal with its interval."""
    out = {}
    for model, model_runs in runs_by_model(load_runs(outputs_dir, runs)).items():
        found = comparison(model_runs, resamples, seed)
        out[model or "unknown model"] = {
            "runs": {run.name: {"label": run.label, "policy": run.policy, "merge": run.merge, "layers": run.layers,
                                "scores": {t: {"metric": m, "score": v} for t, (m, v) in run.scores.items()}}
                     for run in model_runs},
            "changes": found.to_dict() if found is not None else None,
        }
    return out


def build_report(
    outputs_dir: str | os.PathLike, paper: bool = False, runs: list[os.PathLike] | None = None,
    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
) -> str:
    """Markdown report over every scored run under ``outputs_dir``.

    Args:
        outputs_dir: folder holding ``<run>/result.json`` (+ ``<run>/run.json``).
        paper: append the paper's LLaVA-1.5-7B numbers as a reference table.
        runs: only these run folders (``eval`` reports the runs it just made).
        resamples, seed: of the bootstrap intervals (:mod:`futuremask.eval.stats`).
    """
    runs = load_runs(outputs_dir, runs)
    lines = [
        "# MileBench policy comparison",
        "",
        "Scores in % (accuracy, or ROUGE-L F for open-ended tasks); best per task in **bold**; "
        "(±x.xx) = change against the `causal` run of the same model.",
        "",
    ]
    for model, model_runs in runs_by_model(runs).items():
        lines += _model_section(model, model_runs, comparison(model_runs, resamples, seed)) + [""]
    lines += ["Runs:", ""]
    for run in runs:
        identity = f"model={run.model}, policy={run.policy}, merge={run.merge}, backend={run.backend}"
        identity += f", layers={run.layers}" if run.layers else ""
        differ = _differing_tasks(run, [other for other in runs if other.model == run.model])
        mark = f" — **samples differ** from other runs on {', '.join(differ)}" if differ else ""
        lines.append(f"* `{run.name}`: {identity}{mark}")
    if paper:
        lines += [""] + _paper_section()
    return "\n".join(lines) + "\n"


__all__ = [
    "CATEGORY_ORDER",
    "RunResult",
    "build_report",
    "category_means",
    "category_tasks",
    "column_labels",
    "compare_on_shared",
    "comparison",
    "load_run",
    "load_runs",
    "ordered_tasks",
    "report_json",
    "runs_by_model",
]
