"""Changes against ``causal`` with intervals, for reports: per task and per category, over shared samples.

Per-sample scores are the runs' ``RunResult.samples`` (from ``<Task>/eval_score.json``, keyed by sample
id and data fingerprint, :mod:`futuremask.eval.shared`). For each task, the samples that every run
with per-sample scores holds are the ones compared (the score table's shared samples when every run
has them): per task a paired bootstrap interval of
each run's change against the ``causal`` run, plus McNemar's exact p-value on accuracy tasks; per
category the interval of the equal-weight mean over the category's tasks, resampling within each
task (:mod:`futuremask.eval.stats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .shared import paired_scores
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED, Delta, paired_bootstrap, stratified_bootstrap


@dataclass
class Comparison:
    """Changes against the baseline run: ``tasks[task][run name]`` and ``categories[category][run name]``."""

    baseline: str
    resamples: int
    seed: int
    tasks: dict[str, dict[str, Delta]] = field(default_factory=dict)
    categories: dict[str, dict[str, Delta]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline, "resamples": self.resamples, "seed": self.seed, "level": 0.95,
            "tasks": {t: {r: d.to_dict() for r, d in row.items()} for t, row in self.tasks.items()},
            "categories": {c: {r: d.to_dict() for r, d in row.items()} for c, row in self.categories.items()},
        }


def compare(
    runs: Sequence,
    baseline,
    category_tasks: Mapping[str, Sequence[str]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Paired changes of every non-baseline run against ``baseline``.

    Args:
        runs: :class:`~futuremask.eval.report.RunResult` of one model (``scores`` and ``samples``).
        baseline: the plain causal run among them.
        category_tasks: ``{category: tasks}`` to average (the report's category means).

    Returns:
        A :class:`Comparison`; a run without per-sample scores for a task, or a task whose runs share no
        sample, gets no interval there.
    """
    out = Comparison(baseline.name, resamples, seed)
    pairs: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for task in sorted(set().union(*(run.scores for run in runs))):
        having = [run for run in runs if task in run.scores and task in run.samples]
        if baseline not in having:
            continue
        keys, scores = paired_scores([run.samples[task] for run in having])
        if not keys:
            continue
        base = scores[having.index(baseline)]
        for run, mine in zip(having, scores, strict=True):
            if run is baseline:
                continue
            pairs[(run.name, task)] = (mine, base)
            out.tasks.setdefault(task, {})[run.name] = paired_bootstrap(
                mine, base, resamples=resamples, seed=seed, mcnemar=run.scores[task][0] == "Accuracy")
    for category, tasks in category_tasks.items():
        for run in runs:
            if run is baseline or not tasks or not all((run.name, t) in pairs for t in tasks):
                continue
            out.categories.setdefault(category, {})[run.name] = stratified_bootstrap(
                [pairs[(run.name, t)] for t in tasks], resamples=resamples, seed=seed)
    return out


def delta_cell(d: Delta | None) -> str:
    """``+2.50 [-1.00, +6.00]`` in points, ``*`` when the interval excludes 0, McNemar's p when known."""
    if d is None:
        return "–"
    mark = " *" if d.significant else ""
    p = f" p={d.p_mcnemar:.3g}" if d.p_mcnemar is not None else ""
    return f"{d.delta * 100:+.2f} [{d.low * 100:+.2f}, {d.high * 100:+.2f}]{mark}{p}"


__all__ = ["Comparison", "compare", "delta_cell"]
