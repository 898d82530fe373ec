"""eval.stats against direct computations: enumerated bootstrap distributions and the binomial formula."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from futuremask.eval import stats

POLICY = [1, 0, 1, 1, 0]
CAUSAL = [0, 0, 1, 0, 1]


def test_paired_bootstrap_equals_a_literal_loop_over_the_documented_draws():
    policy, causal = [0.9, 0.2, 0.5, 1.0, 0.0, 0.3], [0.4, 0.2, 0.7, 0.1, 0.0, 0.6]
    got = stats.paired_bootstrap(policy, causal, resamples=500, seed=7)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, 6, size=(500, 6))
    means = []
    for row in draws:  # resample r: the mean of the paired differences at row r's indices
        means.append(sum(policy[i] - causal[i] for i in row) / 6)
    means.sort()
    # numpy's default quantile (linear): position q * (R - 1) between the sorted means
    def quantile(q):
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        return means[lo] + (pos - lo) * (means[min(lo + 1, len(means) - 1)] - means[lo])

    assert got.delta == pytest.approx(sum(policy) / 6 - sum(causal) / 6)
    assert got.low == pytest.approx(quantile(0.025)) and got.high == pytest.approx(quantile(0.975))
    assert got.n == 6 and got.p_mcnemar is None  # McNemar only when asked (accuracy tasks)


def test_paired_bootstrap_matches_the_enumerated_bootstrap_distribution():
    """All 5^5 resamples are equally likely: the interval ends sit at the exact 2.5 % / 97.5 % quantiles."""
    diffs = [a - b for a, b in zip(POLICY, CAUSAL, strict=True)]
    means = sorted(sum(diffs[i] for i in idx) / 5 for idx in itertools.product(range(5), repeat=5))
    got = stats.paired_bootstrap(POLICY, CAUSAL, resamples=200_000, seed=1)

    def cdf(x):
        return sum(m <= x + 1e-12 for m in means) / len(means)

    def below(x):
        return sum(m < x - 1e-12 for m in means) / len(means)

    assert below(got.low) <= 0.025 + 0.003 and cdf(got.low) >= 0.025 - 0.003
    assert below(got.high) <= 0.975 + 0.003 and cdf(got.high) >= 0.975 - 0.003
    assert got.delta == pytest.approx(0.2) and not got.significant  # 1 net win of 5 is noise


def test_interval_excluding_zero_is_marked_significant():
    got = stats.paired_bootstrap([1] * 30, [0] * 10 + [1] * 20, resamples=2000, seed=0)
    assert got.low > 0 and got.significant
    assert got.to_dict()["significant"] is True


def test_stratified_bootstrap_resamples_each_task_within_itself():
    a = ([1.0, 0.0, 1.0], [0.0, 0.0, 1.0])
    b = ([0.5, 0.5], [0.5, 0.0])
    got = stats.stratified_bootstrap([a, b], resamples=20_000, seed=3)
    # the enumerated distribution: every resample of task a (3^3) with every resample of task b (2^2)
    da = [x - y for x, y in zip(*a, strict=True)]
    db = [x - y for x, y in zip(*b, strict=True)]
    means = sorted(
        (sum(da[i] for i in ia) / 3 + sum(db[j] for j in ib) / 2) / 2
        for ia in itertools.product(range(3), repeat=3)
        for ib in itertools.product(range(2), repeat=2)
    )
    assert got.delta == pytest.approx((1 / 3 + 0.25) / 2) and got.n == 5
    assert min(means) <= got.low <= got.high <= max(means)
    low_rank = sum(m < got.low - 1e-12 for m in means) / len(means)
    high_rank = sum(m <= got.high + 1e-12 for m in means) / len(means)
    assert low_rank <= 0.025 + 0.005 and high_rank >= 0.975 - 0.005
    # a task with a single sample never moves: pooling all samples as one task would give another interval
    pooled = stats.paired_bootstrap([*a[0], *b[0]], [*a[1], *b[1]], resamples=20_000, seed=3)
    assert (pooled.low, pooled.high) != (got.low, got.high)


def _binomial_two_sided(wins: int, losses: int) -> float:
    """Exact two-sided binomial test, p = 1/2: the total probability of outcomes no likelier than observed."""
    m = wins + losses
    pmf = [math.comb(m, k) * 0.5**m for k in range(m + 1)]
    observed = pmf[wins]
    return min(1.0, sum(p for p in pmf if p <= observed * (1 + 1e-9)))


@pytest.mark.parametrize("wins,losses", [(0, 0), (1, 0), (5, 0), (6, 0), (3, 7), (10, 2), (12, 12), (40, 25)])
def test_mcnemar_equals_the_exact_binomial_test_of_the_discordant_pairs(wins, losses):
    policy = [1] * wins + [0] * losses + [1] * 4 + [0] * 3  # 4 both right, 3 both wrong: not counted
    causal = [0] * wins + [1] * losses + [1] * 4 + [0] * 3
    want = 1.0 if wins + losses == 0 else _binomial_two_sided(wins, losses)
    assert stats.mcnemar_exact(policy, causal) == pytest.approx(want, rel=1e-12)
    got = stats.paired_bootstrap(policy, causal, resamples=10, mcnemar=True)
    assert got.p_mcnemar == pytest.approx(want, rel=1e-12)


def test_mcnemar_floor_is_six_net_wins_at_five_percent():
    assert stats.mcnemar_floor() == 6
    assert stats.mcnemar_from_counts(5, 0) > 0.05 >= stats.mcnemar_from_counts(6, 0)


@pytest.mark.parametrize("net", [3, 6, 7, 10, 16])
def test_max_discordant_is_the_largest_significant_split(net):
    significant = [m for m in range(net, 200, 2) if _binomial_two_sided((m + net) // 2, (m - net) // 2) <= 0.05]
    want = max(significant) if significant else None
    assert stats.max_discordant(net) == want
    if want is not None:  # p grows with the discordant count: everything below is significant too
        assert significant == list(range(net, want + 1, 2))


def test_detectable_difference_is_the_normal_half_width():
    assert stats.detectable_difference(200, 0.1) == pytest.approx(1.959964 * math.sqrt(0.1 / 200))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="no shared samples"):
        stats.paired_bootstrap([], [])
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar_exact([0.5], [1])
    with pytest.raises(ValueError, match="0/1"):
        stats.paired_bootstrap([0.5], [1], mcnemar=True)
    with pytest.raises(ValueError, match="resamples"):
        stats.paired_bootstrap([1], [0], resamples=0)
