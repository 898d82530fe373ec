"""The bonus of a run of rows from its future keys alone equals the literal definition on full score rows.

Oracle: ``futuremask.merge`` (the definition, row by row on the ``[H, R, L]`` scores, itself checked
against a hand-written reference in test_attention.py) given each row's future ``keys ∩ (i, ∞)``.
Every path of :func:`futuremask.kernels.merge_runs.run_bonus` is hit: the flash ``lse`` (keys after the
run, the reversed causal square, a per-row mask when the run's own keys have gaps), the blocked pooling
(several row and column blocks, rows whose window is shorter than ``k``, max and mean) and ``prefix > 1``.
"""

from __future__ import annotations

import pytest
import torch

from futuremask import Merge
from futuremask.kernels import merge_runs
from futuremask.kernels.future_runs import FutureRun
from futuremask.merge import _pooled_future, lse_future

LENGTH, START, STOP = 90, 20, 50

# the run is rows 20..49; its first row's future keys, in the shapes the policies produce (and more)
KEYS = {
    "image+text after": list(range(21, 90)),  # future: the rest of the image and everything after
    "only after": list(range(60, 75)) + list(range(80, 88)),  # future_v2t-like: text stretches after the image
    "gaps inside": [22, 23, 30, 31, 32, 45] + list(range(55, 70)),  # the run's own keys not contiguous
    "only inside": list(range(21, 50)),  # future_v2v, one image: the last row has no future
    "end cuts the windows": list(range(21, 52)),  # a short segment: rows near the end have n_i < k
}
MERGES = [
    Merge(kind="kernel", kernel=3, pool="max"),
    Merge(kind="kernel", kernel=3, pool="mean"),
    Merge(kind="kernel", kernel=1, pool="max"),
    Merge(kind="kernel", kernel=5, pool="mean"),
    Merge(kind="kernel", kernel=40, pool="max"),  # every row's window is shorter than k
    Merge(kind="kernel", kernel=3, pool="max", prefix=2),
    Merge(kind="kernel", kernel=4, pool="mean", prefix=3),
    Merge(kind="lse"),
    Merge(kind="lse", prefix=2),
]


def _literal(q, k, keys, end, merge, scale):
    """``[H, R, p]`` from the full score rows and each row's future mask, by ``futuremask.merge``."""
    rows = torch.arange(START, STOP)
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale  # [H, R, L]
    is_key = torch.zeros(LENGTH, dtype=torch.bool)
    is_key[keys] = True
    future = is_key[None, :] & (torch.arange(LENGTH)[None, :] > rows[:, None])  # [R, L]
    if merge.kind == "lse":
        return lse_future(scores, future, merge.prefix)
    return _pooled_future(scores, future, rows, merge, merge.prefix, end)


@pytest.mark.parametrize("shape", KEYS)
@pytest.mark.parametrize("merge", MERGES, ids=lambda m: f"{m.kind}-{m.pool}-k{m.kernel}-p{m.prefix}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_run_bonus_equals_the_definition(shape, merge, dtype):
    torch.manual_seed(len(shape) + merge.kernel)
    heads, dim, scale = 3, 8, 0.4
    keys = torch.tensor(KEYS[shape])
    end = 52 if shape == "end cuts the windows" else LENGTH
    q = torch.randn(heads, STOP - START, dim).to(dtype)
    k = torch.randn(heads, LENGTH, dim).to(dtype)
    acc = torch.promote_types(dtype, torch.float32)  # the kernel's accumulation dtype
    run = FutureRun(START, STOP, keys, end)
    want = _literal(q, k, keys, end, merge, scale)
    for chunk_bytes in (2**30, 4 * heads * (merge_runs.BLOCK_COLUMNS + 4) * 7):  # one block / blocks of 7 rows
        got = merge_runs.run_bonus(q.to(acc), k, run, merge, merge.prefix, scale, chunk_bytes)
        assert got.dtype == acc and got.shape == want.shape
        tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(got.double(), want, **tol)


def test_pooled_blocks_cover_more_columns_than_one_block():
    """The blocked pooling's column blocks overlap by k - 1: a run wider than a block equals the definition."""
    torch.manual_seed(0)
    heads, dim, length, start, stop = 2, 4, 420, 10, 40
    keys = torch.arange(start + 1, length)
    q, k = torch.randn(heads, stop - start, dim, dtype=torch.float64), torch.randn(heads, length, dim, dtype=torch.float64)
    merge = Merge(kind="kernel", kernel=4, pool="max")
    assert length - start > 2 * merge_runs.BLOCK_COLUMNS
    got = merge_runs.run_bonus(q, k, FutureRun(start, stop, keys, length), merge, 1, 0.5, 4 * heads * 140 * 8)
    rows = torch.arange(start, stop)
    future = (torch.arange(length)[None, :] > rows[:, None]) & (torch.arange(length)[None, :] > start)
    scores = torch.matmul(q, k.transpose(-1, -2)) * 0.5
    torch.testing.assert_close(got, _pooled_future(scores, future, rows, merge, 1, length), atol=1e-10, rtol=1e-10)
