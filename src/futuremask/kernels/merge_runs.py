"""The bonus of a run of rows (:mod:`.future_runs`) from its future keys alone, without a full score row.

Row ``i`` of a run ``start:stop`` has the future keys ``G ∩ (i, ∞)`` of one ascending key list ``G``.

* ``kind="lse"``, one prefix: the bonus is the log-sum-exp of the row's future scores, which PyTorch's
  fused CPU flash kernel reports beside its (unused) output. The keys after the run's last row are one
  rectangle for every row; the keys among the run's rows are a strict upper triangle, which is causal
  attention once rows and keys are both reversed; the two are combined with ``logaddexp``.
* ``kind="kernel"``, one prefix: the windows are pooled on the columns of :func:`window_columns`, in
  blocks of rows x columns (with the ``k - 1`` columns a block's last windows reach) small enough to
  stay in cache while the scores are pooled and summed. A row block skips the columns that are after
  none of its rows and masks per row only the columns among its own rows.
* ``prefix > 1``: the scores of a chunk of rows on ``G``, split into groups per row
  (:func:`.merge_fast.pooled_groups`, :func:`futuremask.merge.lse_future`).
"""

from __future__ import annotations

import torch

from ..merge import Merge, lse_future
from .future_runs import FutureRun
from .merge_fast import pooled_groups

BLOCK_BYTES = 3 * 2**19  # a block of the pooled kernel's scores, all heads (fits this CPU's L2 with its pooling)
BLOCK_COLUMNS = 128
GROUPED_CHUNK_BYTES = 8 * 2**20  # prefix > 1: scores of a chunk of rows against every future key


def run_bonus(
    q: torch.Tensor, k: torch.Tensor, run: FutureRun, merge: Merge, n_groups: int, scale: float, chunk_bytes: int
) -> torch.Tensor:
    """float ``[H, R, p]``: what each row of ``run`` adds to each of its ``p = n_groups`` prefix positions.

    Args:
        q: float ``[H, R, D]``, the run's queries (rows ``run.start:run.stop``), in the accumulation dtype.
        k: ``[H, L, D]``, every key of the sequence (any float dtype; cast to ``q``'s).
        chunk_bytes: bound on the scores held at once (the blocks are at most this big).
    """
    if n_groups > 1:
        return _grouped_bonus(q, k, run, merge, n_groups, scale, chunk_bytes)
    if merge.kind == "lse":
        return _lse_bonus(q, k, run, scale)[..., None]
    return _pooled_bonus(q, k, run, merge, scale, min(chunk_bytes, BLOCK_BYTES))[..., None]


def _flash_lse(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool = False, mask=None) -> torch.Tensor:
    """float ``[H, R]``: log-sum-exp of ``q [H, R, D] @ k [H, C, D]^T * scale`` (top-left causal if asked)."""
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q[None], k[None], k[None], 0.0, causal, attn_mask=mask, scale=scale
    )
    return lse[0]


def _lse_bonus(q: torch.Tensor, k: torch.Tensor, run: FutureRun, scale: float) -> torch.Tensor:
    """float ``[H, R]``: each row's log-sum-exp over its future keys (``-inf`` where it has none)."""
    start, stop = run.start, run.stop
    inside, outside = run.keys[run.keys < stop], run.keys[run.keys >= stop]
    total = torch.full(q.shape[:2], float("-inf"), dtype=q.dtype, device=q.device)
    if outside.numel():  # after every row of the run
        total = _flash_lse(q, k[:, outside].to(q.dtype), scale)
    if inside.numel() == 0:
        return total
    if inside.numel() == stop - 1 - start:  # every key among the rows: rows e-2..s against keys e-1..s+1
        keys = k[:, start + 1 : stop].to(q.dtype).flip(1)
        part = _flash_lse(q[:, :-1].flip(1), keys, scale, causal=True).flip(1)
        total[:, :-1] = torch.logaddexp(total[:, :-1], part)
    else:  # some of the keys among the rows: a per-row mask
        rows = torch.arange(start, stop, device=q.device)
        after = inside[None, :] > rows[:, None]  # [R, C_in]
        mask = torch.zeros(after.shape, dtype=q.dtype, device=q.device).masked_fill_(~after, float("-inf"))
        part = _flash_lse(q, k[:, inside].to(q.dtype), scale, mask=mask[None, None])
        total = torch.logaddexp(total, torch.where(after.any(-1), part, float("-inf")))
    return total


def window_columns(keys: torch.Tensor, first_row: int, end: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The key columns a run scores for ``kind="kernel"``: its future keys and the zeros windows need.

    ``f`` is 0 off the future keys, so of a gap between two future keys only its last ``k - 1``
    positions matter (the windows that start there reach the next key; a window over zeros only adds
    nothing) and after the last key the first ``k - 1`` before ``end``; windows start after
    ``first_row``. On the kept columns, in order, every window the rows need sees exactly the values
    it sees on absolute positions.

    Args:
        keys: long ``[C]``, ascending future keys of the run's first row ``first_row``.
        end: the future end ``P``; k: the window size.

    Returns:
        ``(real long [C'], is_key bool [C'])``: the kept positions, ascending, and which are keys.
    """
    device = keys.device
    mark = torch.zeros(end + k, dtype=torch.bool, device=device)
    for d in range(1, k):
        mark[(keys - d).clamp(min=0)] = True  # the k-1 positions before each key
    if keys.numel():
        last = int(keys[-1])
        mark[last + 1 : last + k] = True  # after the last key, up to the end
    mark[: first_row + 1] = False
    mark[end:] = False
    is_key = torch.zeros_like(mark)
    is_key[keys] = True
    mark |= is_key
    real = mark.nonzero().flatten()
    return real, is_key[real]


def _window_keys(q: torch.Tensor, k: torch.Tensor, run: FutureRun, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real long [C'], keys [H, C', D])``: the columns of :func:`window_columns`, 0 where not a key."""
    real, is_key = window_columns(run.keys, run.start, run.end, kernel)
    return real, torch.where(is_key[None, :, None], k[:, real].to(q.dtype), 0.0)


def _pooled_bonus(
    q: torch.Tensor, k: torch.Tensor, run: FutureRun, merge: Merge, scale: float, block_bytes: int
) -> torch.Tensor:
    """float ``[H, R]``: the sum of each row's pooled windows (``kind="kernel"``, one prefix), blockwise.

    Pooled on unscaled scores (a max commutes with the positive ``scale``; a sum is scaled once).
    """
    kernel, is_max = merge.kernel, merge.pool == "max"
    real, keys = _window_keys(q, k, run, kernel)
    heads, n_rows = q.shape[0], q.shape[1]
    rows = torch.arange(run.start, run.stop, device=q.device)
    full = real.numel() - kernel + 1  # columns where a whole window starts ...
    hi = min(int(torch.searchsorted(real, run.end - kernel, right=True)), full)  # ... at or before P - k
    columns = BLOCK_COLUMNS
    per_block = min(max(1, block_bytes // (q.element_size() * heads * (columns + kernel - 1))), n_rows)
    bonus = torch.zeros(heads, n_rows, dtype=q.dtype, device=q.device)
    # one pair of buffers for every whole block: allocations this size cost fresh pages each time
    # wherever malloc maps them (as the benchmark's exact RSS accounting makes it)
    whole: tuple[torch.Tensor, torch.Tensor] | None = None
    for a in range(0, n_rows, per_block):
        block = rows[a : a + per_block]
        qt = q[:, a : a + per_block].transpose(-1, -2)  # [H, D, n]
        lo = int(torch.searchsorted(real, block[0], right=True))  # columns after none of the block's rows
        m = int(torch.searchsorted(real, block[-1], right=True))  # columns not after every row: masked
        acc = bonus[:, a : a + per_block]
        for c in range(lo, hi, columns):
            w = min(columns, hi - c)
            buffers = (None, None)
            if (w, block.numel()) == (columns, per_block):
                if whole is None:
                    whole = tuple(torch.empty(heads, width, per_block, dtype=q.dtype, device=q.device)
                                  for width in (columns + kernel - 1, columns))
                buffers = whole
            scores = torch.matmul(keys[:, c : c + w + kernel - 1], qt, out=buffers[0])  # [H, w + k - 1, n]
            pooled = scores[:, :w]
            for d in range(1, kernel):  # the window at column c covers c .. c+k-1
                if d == 1:
                    pooled = (torch.maximum if is_max else torch.add)(pooled, scores[:, 1 : 1 + w], out=buffers[1])
                elif is_max:
                    torch.maximum(pooled, scores[:, d : d + w], out=pooled)
                else:
                    pooled += scores[:, d : d + w]
            if c < m:
                cut = min(m, c + w) - c
                pooled[:, :cut].masked_fill_(real[c : c + cut, None] <= block[None, :], 0.0)
            acc += pooled.sum(1)
    bonus *= scale if is_max else scale / kernel
    short = ((run.end - 1 - rows) < kernel).nonzero().flatten()  # rows whose one window is shorter than k
    for j in short.tolist():
        row = int(rows[j])
        vals = torch.matmul(keys[:, real > row], q[:, j, :, None])[..., 0] * scale  # [H, n]
        bonus[:, j] = vals.amax(-1) if is_max else vals.sum(-1) / (run.end - 1 - row)
    return bonus


def _grouped_bonus(
    q: torch.Tensor, k: torch.Tensor, run: FutureRun, merge: Merge, n_groups: int, scale: float, chunk_bytes: int
) -> torch.Tensor:
    """float ``[H, R, p]``: :func:`run_bonus` for ``prefix > 1``, from the scores of a chunk of rows at a time."""
    if merge.kind == "kernel":
        real, keys = _window_keys(q, k, run, merge.kernel)
    else:
        real, keys = run.keys, k[:, run.keys].to(q.dtype)
    heads = q.shape[0]
    per_chunk = max(1, min(chunk_bytes, GROUPED_CHUNK_BYTES) // (4 * 3 * heads * max(real.numel(), 1)))
    parts = []
    for a in range(0, q.shape[1], per_chunk):
        qr = q[:, a : a + per_chunk]
        rows = torch.arange(run.start + a, run.start + a + qr.shape[1], device=q.device)
        scores = torch.matmul(qr, keys.transpose(-1, -2)).mul_(scale)  # [H, R, C]
        after = real[None, :] > rows[:, None]  # [R, C]
        if merge.kind == "lse":
            parts.append(lse_future(scores, after, n_groups))
        else:
            parts.append(pooled_groups(scores, real, rows, run.end, merge, n_groups))
    return torch.cat(parts, 1)

