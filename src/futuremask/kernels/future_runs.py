"""Runs of query rows that share one list of future keys, found once per forward for the merge kernel.

Under every policy the rows of one visual run (an image) or of one text stretch have the same
future keys, cut at the row itself: ``F_i = G ∩ (i, ∞)`` for one key list ``G``. The merge kernel
then scores a whole run against ``G`` alone (the keys the rows need, no others) with one product.
Rows whose future is not of that form (none under the built-in policies) are returned apart, for
the kernel's general path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..policies import DENSE_CHUNK
from .rows import FutureRows


@dataclass(frozen=True)
class FutureRun:
    """Query rows ``start:stop`` of one batch row; row ``i``'s future keys are ``keys[keys > i]``.

    ``keys`` is long ``[C]``, ascending: the future keys of row ``start``. ``end`` is the rows'
    future end ``P`` (the windows of ``kind="kernel"`` stop there).
    """

    start: int
    stop: int
    keys: torch.Tensor
    end: int


def future_runs(
    rows: FutureRows, b: int, ends: torch.Tensor, sinks: torch.Tensor, max_keys: int | None = None
) -> tuple[list[FutureRun], torch.Tensor]:
    """The runs of batch row ``b`` (memoised on ``rows``: every layer asks the same question).

    Args:
        rows: the prompt pass's future keys.
        b: the batch row.
        ends: long ``[L]``, each query row's future end ``P_i``; sinks: long ``[L, p]``, its sink
            positions. A run never mixes two ends or two sets of sinks.
        max_keys: bound on the key lists kept, summed over runs (default ``4 L``); rows past it go
            to the general path.

    Returns:
        ``(runs, other)``: the runs in order, and long ``[n]`` the rows with a future that are in none.
    """
    memo_key = ("runs", b)
    if memo_key in rows.memo:
        return rows.memo[memo_key]
    length, device = rows.length, rows.device
    max_keys = 4 * length if max_keys is None else max_keys
    keys = torch.arange(length, device=device)
    has_parts, same_parts = [], []
    last = torch.zeros(length, dtype=torch.bool, device=device)  # the row before the chunk
    step = max(1, DENSE_CHUNK // max(length, 1))
    for a in range(0, length, step):
        idx = torch.arange(a, min(a + step, length), device=device)
        fut = rows.rows(b, idx)  # [n, L]
        prev = torch.cat([last[None], fut[:-1]])
        has = fut.any(-1)
        # row i continues row i-1's run: its future is row i-1's without key i, same end and sinks
        same = ~((prev & (keys[None, :] > idx[:, None])) ^ fut).any(-1) & has & prev.any(-1)
        before = (idx - 1).clamp(min=0)
        same &= (ends[idx] == ends[before]) & (sinks[idx] == sinks[before]).all(-1)
        has_parts.append(has)
        same_parts.append(same)
        last = fut[-1]
    has, same = torch.cat(has_parts), torch.cat(same_parts)
    starts = (has & ~same).nonzero().flatten()
    breaks = torch.cat([(~same).nonzero().flatten(), torch.tensor([length], device=device)])
    stops = breaks[torch.searchsorted(breaks, starts, right=True)]  # the next row that starts or has none
    runs: list[FutureRun] = []
    other = []
    kept = 0
    for s, e in zip(starts.tolist(), stops.tolist(), strict=True):
        run_keys = rows.rows(b, torch.tensor([s], device=device))[0].nonzero().flatten()
        if kept + run_keys.numel() > max_keys:
            other.append(torch.arange(s, e, device=device))
        else:
            kept += run_keys.numel()
            runs.append(FutureRun(s, e, run_keys, int(ends[s])))
    other_rows = torch.cat(other) if other else torch.zeros(0, dtype=torch.long, device=device)
    rows.memo[memo_key] = (runs, other_rows)
    return runs, other_rows
