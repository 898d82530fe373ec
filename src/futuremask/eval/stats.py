"""Uncertainty of policy comparisons: paired bootstrap intervals, McNemar's exact test, detectable deltas.

Pure numpy (no torch, no model code). Every comparison is *paired*: a policy and the ``causal``
baseline are scored on the same samples, and the statistic is the per-sample difference.

* :func:`paired_bootstrap` -- the change of the mean score against the baseline with a 95 %
  percentile-bootstrap interval. The resampling is fixed by ``seed``: ``numpy.random.default_rng(seed)``
  draws an index matrix ``integers(0, n, size=(resamples, n))``; resample ``r`` is the mean of the
  differences at row ``r``'s indices; the interval is ``numpy.quantile`` (linear interpolation) of the
  resample means at ``(1 - level) / 2`` and ``(1 + level) / 2``.
* :func:`stratified_bootstrap` -- the same for a mean over several tasks (a category mean): each
  resample redraws every task's samples *within the task* (the same seeded generator, tasks in the
  given order), averages each task's differences, then averages over tasks with equal weight, as the
  category score does.
* :func:`mcnemar_exact` -- for 0/1 scores (accuracy tasks): the two-sided exact McNemar p-value, the
  binomial test of the ``b`` discordant pairs the policy wins against the ``c`` it loses, with
  ``p = 0.5``: ``min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c))``.
* :func:`mcnemar_floor`, :func:`max_discordant` and :func:`detectable_difference` -- what a task of
  ``n`` samples can resolve at all (see ``docs/choosing.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Delta:
    """A paired change against the baseline (fractions, not percent).

    Attributes:
        delta: mean(policy) - mean(baseline) over the shared samples.
        low, high: the bootstrap interval of ``delta``.
        n: number of shared samples (summed over tasks for a category).
        p_mcnemar: McNemar's exact p-value (0/1 scores only), else None.
    """

    delta: float
    low: float
    high: float
    n: int
    p_mcnemar: float | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def _differences(scores: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two equal-length 1-D sequences, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no shared samples to compare")
    return a - b


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _is_binary(*arrays: Sequence[float]) -> bool:
    return all(np.isin(np.asarray(a, dtype=np.float64), (0.0, 1.0)).all() for a in arrays)


def paired_bootstrap(
    scores: Sequence[float],
    baseline: Sequence[float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
    mcnemar: bool = False,
) -> Delta:
    """The change of the mean against ``baseline`` with its paired percentile-bootstrap interval.

    Args:
        scores, baseline: per-sample scores ``[n]`` of the policy and of the baseline, in the same
            sample order.
        resamples: number of bootstrap resamples; seed: the generator's seed (module docstring).
        level: coverage of the interval.
        mcnemar: also compute McNemar's exact p-value (an accuracy task: every score 0 or 1).

    Returns:
        A :class:`Delta`.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    d = _differences(scores, baseline)
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    low, high = _interval(d[idx].mean(axis=1), level)
    p = mcnemar_exact(scores, baseline) if mcnemar else None
    return Delta(float(d.mean()), low, high, int(d.size), p)


def stratified_bootstrap(
    tasks: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
) -> Delta:
    """The change of an equal-weight mean over tasks, resampling each task's samples within the task.

    Args:
        tasks: ``[(scores, baseline), ...]``, one pair of per-sample score sequences per task.

    Returns:
        A :class:`Delta` whose ``delta`` is the mean over tasks of each task's mean difference and whose
        ``n`` is the total number of samples; no McNemar p-value.
    """
    if not tasks:
        raise ValueError("no task to average over")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    diffs = [_differences(s, b) for s, b in tasks]
    rng = np.random.default_rng(seed)
    per_task = np.stack([d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1) for d in diffs])
    low, high = _interval(per_task.mean(axis=0), level)
    delta = float(np.mean([d.mean() for d in diffs]))
    return Delta(delta, low, high, int(sum(d.size for d in diffs)))


def mcnemar_exact(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 scores ``[n]`` (1.0 when no pair is discordant)."""
    d = _differences(scores, baseline)
    if not _is_binary(scores, baseline):
        raise ValueError("McNemar's test needs 0/1 scores (an accuracy task)")
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return mcnemar_from_counts(wins, losses)


def mcnemar_from_counts(wins: int, losses: int) -> float:
    """McNemar's exact two-sided p-value from the discordant counts (policy right / baseline right)."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**m)


def mcnemar_floor(alpha: float = 1 - LEVEL) -> int:
    """The fewest net samples a policy must win by before McNemar's test can reach ``alpha`` at all.

    With ``k`` wins and no loss the p-value is ``2 / 2^k``, its smallest value for a net gain of ``k``;
    on a task of ``n`` samples no accuracy change below ``mcnemar_floor() / n`` can be significant.
    """
    k = 1
    while mcnemar_from_counts(k, 0) > alpha:
        k += 1
    return k


def max_discordant(net_wins: int, alpha: float = 1 - LEVEL) -> int | None:
    """The most discordant pairs a net gain of ``net_wins`` samples may come with and still reach ``alpha``.

    A gain of ``k`` net samples is ``b - c = k`` with ``b + c = m`` discordant pairs; McNemar's p grows
    with ``m``. Returns the largest such ``m`` with ``p <= alpha``, or None when even ``m = k`` (no loss)
    is not significant (``k`` below :func:`mcnemar_floor`).
    """
    k = abs(int(net_wins))
    if mcnemar_from_counts(k, 0) > alpha:
        return None
    m = k
    while mcnemar_from_counts((m + 2 + k) // 2, (m + 2 - k) // 2) <= alpha:
        m += 2
    return m


def detectable_difference(n: int, discordant: float, *, z: float = 1.959964) -> float:
    """Half-width of the normal-approximation 95 % interval of a paired accuracy change on ``n`` samples.

    ``discordant`` is the fraction of samples on which the two policies disagree (one right, one wrong);
    the per-sample difference then has variance ``discordant - delta^2 <= discordant``, so a change
    smaller than ``z * sqrt(discordant / n)`` cannot exclude 0.
    """
    if n < 1 or not 0 <= discordant <= 1:
        raise ValueError(f"need n >= 1 and 0 <= discordant <= 1, got n={n}, discordant={discordant}")
    return z * math.sqrt(discordant / n)


__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "Delta",
    "detectable_difference",
    "mcnemar_exact",
    "max_discordant",
    "mcnemar_floor",
    "mcnemar_from_counts",
    "paired_bootstrap",
    "stratified_bootstrap",
]
