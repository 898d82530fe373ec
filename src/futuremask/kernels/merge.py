"""Merge attention: causal attention whose future is folded into the sink (DESIGN §4), in row chunks.

Rows with no future keys (all text rows under the future-aware policies) go through SDPA with the
causal mask; only rows with future keys get explicit scores, a chunk of rows at a time, so no
per-head ``L x L`` score tensor is ever held. Without autograd, a merged row is the causal row
corrected at its sink positions (:mod:`.merge_fast`), which needs no second pass over the values.
"""

from __future__ import annotations

import torch

from ..merge import Merge, merged_logits, sink_groups
from .blocked import blocked_sdpa
from .common import as_4d, expand_heads
from .future_runs import FutureRun, future_runs
from .merge_dense import fits_dense, merge_rows_corrected, merge_rows_dense, merged_rows
from .merge_fast import corrected_rows, sink_correction
from .merge_runs import run_bonus
from .rows import FutureRows
from .sdpa import sdpa_attention

DEFAULT_CHUNK_BYTES = 32 * 2**20


def merge_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    base: torch.Tensor | None,
    future: torch.Tensor | FutureRows,
    *,
    merge: Merge,
    prefix_positions: torch.Tensor,
    scale: float | None = None,
    prompt_end: torch.Tensor | None = None,
    chunk_bytes: int | None = None,
) -> torch.Tensor:
    """``[B, H, L, D]``: attention over ``base`` with the ``future`` keys merged into the prefix.

    Args:
        q: ``[B, H, L, D]`` queries of a prompt pass (positions ``0 .. L-1``).
        k, v: ``[B, Hkv, L, D]``.
        base: bool ``[B, L, L]`` or ``[B, 1, L, L]``, the causal keys each row attends; None means
            exactly causal (no padding).
        future: bool ``[B, L, L]`` or ``[B, 1, L, L]``, the extra future keys ``F_i`` (``j > i``), or a
            :class:`~futuremask.kernels.rows.FutureRows` that yields them a chunk of rows at a time.
        merge: the merge settings.
        prefix_positions: long ``[B, L, p]``, the sink positions of each query (the first valid
            tokens of its packed sequence), or ``[B, p]`` when they are the same for a whole row.
        scale: defaults to ``D ** -0.5``.
        prompt_end: long ``[B, L]``, one past the end of each query's segment, where its future
            windows stop (``[B]``: the same for a whole row; default ``L``).
        chunk_bytes: bound on the float32 scores held at once per chunk of rows (default
            :data:`DEFAULT_CHUNK_BYTES`, read at call time).
    """
    base4 = as_4d(base)
    if not isinstance(future, FutureRows):
        future = _DenseRows(as_4d(future), base4)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    batch, heads, length = q.shape[0], q.shape[1], q.shape[2]
    ends = _row_ends(prompt_end, batch, length, q.device)
    sinks = prefix_positions.to(q.device)
    sinks = sinks[:, None].expand(batch, length, -1) if sinks.dim() == 2 else sinks  # [B, L, p]: per query
    chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    inference = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))
    k, v = expand_heads(q, k, v)  # once: every path below takes them expanded
    fast = inference and q.device.type == "cpu"
    if inference and fits_dense(q, chunk_bytes):  # a short pass: every merged row at once, no per-run work
        chosen = merged_rows(future, sinks, ends)
        if fast and merge.prefix == 1:
            return merge_rows_corrected(q, k, v, *_causal_with_lse(q, k, v, base4, scale), chosen, merge, scale)
        return merge_rows_dense(q, k, v, sdpa_attention(q, k, v, base4, scale=scale), chosen, merge, scale)
    if fast:  # the causal pass reports each row's log-sum-exp: a run needs only its future scores
        out, lse = _causal_with_lse(q, k, v, base4, scale)
    else:
        out, lse = sdpa_attention(q, k, v, base4, scale=scale), None
        if out.requires_grad:
            out = out.clone()  # the merged rows are written in place below
    for b in range(batch):
        if fast:
            runs, rows = future_runs(future, b, ends[b], sinks[b])
            redo = [_merge_run(q[b], k[b], v[b], out[b], lse[b], run, future, b, sinks[b, run.start], merge,
                               scale, chunk_bytes) for run in runs]
            rows = torch.cat([rows, *redo])
        else:
            rows = future.rows_with_future(b, q.device)
        _merge_rows(q[b], k[b], v[b], out[b], rows, future, b, sinks[b], merge, ends[b], scale,
                    max(1, chunk_bytes // (4 * 6 * heads * length)))
    return out


def _row_ends(prompt_end: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """long ``[B, L]``: each query row's future end, from ``[B]`` (one per sequence) or ``[B, L]``."""
    if prompt_end is None:
        return torch.full((batch, length), length, dtype=torch.long, device=device)
    ends = torch.as_tensor(prompt_end, device=device).long()
    return ends[:, None].expand(batch, length) if ends.dim() == 1 else ends


def _causal_with_lse(q, k, v, base, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU: attention over ``base`` (None = causal) and each row's log-sum-exp, float ``[B, H, L]``.

    k, v: ``[B, H, L, D]``, expanded to the query heads."""
    if base is None:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
    return blocked_sdpa(q, k, v, base, scale=scale, return_lse=True)


def _merge_run(q, k, v, out, lse, run: FutureRun, future: FutureRows, b: int, sinks: torch.Tensor,
               merge: Merge, scale: float, chunk_bytes: int) -> torch.Tensor:
    """Merge the rows of one run of batch row ``b`` in place in ``out`` (``[H, L, D]``); returns the rows
    (long ``[n]``) to recompute exactly. q/k/v: ``[H, L, D]``; lse: float ``[H, L]``; sinks: long ``[p]``."""
    acc = torch.promote_types(q.dtype, torch.float32)
    length, span = q.shape[1], slice(run.start, run.stop)
    rows = torch.arange(run.start, run.stop, device=q.device)
    qr = q[:, span].to(acc)
    groups, positions, keep = sink_groups(rows, sinks, length)  # keep: [R, g]
    if future.base is not None:
        keep &= future.base[b, 0][rows[:, None], positions[None, :]]
    bonus = run_bonus(qr, k, run, merge, sinks.numel(), scale, chunk_bytes)[..., groups]  # [H, R, g]
    sink_scores = torch.matmul(qr, k[:, positions].to(acc).transpose(-1, -2)).mul_(scale) if positions.numel() else None
    merged, exact = sink_correction(out[:, span], lse[:, span], sink_scores, bonus, keep, v[:, None, positions].to(acc),
                                    merge)
    out[:, span] = merged.to(out.dtype)
    return rows[exact]


def _merge_rows(q, k, v, out, rows: torch.Tensor, future: FutureRows, b: int, sinks: torch.Tensor,
                merge: Merge, ends: torch.Tensor, scale: float, rows_per_chunk: int) -> None:
    """The general path: merge ``rows`` of batch row ``b`` from their scores against every key.

    sinks: long ``[L, p]``, ends: long ``[L]``, per query."""
    acc = torch.promote_types(q.dtype, torch.float32)  # scores in float32 at least
    kf, vf = k.to(acc), v.to(acc)
    for group, group_sinks, end in _row_groups(rows, sinks, ends, k.shape[1]):
        for start in range(0, group.numel(), rows_per_chunk):
            r = group[start : start + rows_per_chunk]
            base_r, fut_r = future.base_rows(b, r), future.rows(b, r)
            scores = torch.matmul(q[:, r].to(acc), kf.transpose(-1, -2)) * scale
            if not out.requires_grad:  # inference: correct the causal rows at the sinks (merge_fast.py)
                merged, exact = corrected_rows(out[:, r], scores, base_r, fut_r, r, group_sinks, merge, vf, end)
                out[:, r] = merged.to(out.dtype)
                r, scores, base_r, fut_r = r[exact], scores[:, exact], base_r[exact], fut_r[exact]
                if r.numel() == 0:
                    continue
            logits = merged_logits(scores, base_r, fut_r, r, group_sinks, merge, end)
            weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
            out[:, r] = torch.matmul(weights, vf).to(out.dtype)


def _row_groups(
    rows: torch.Tensor, sinks: torch.Tensor, end: torch.Tensor | None, length: int
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Split query ``rows`` (long ``[R]``) into groups sharing their sink positions and segment end.

    Args:
        sinks: long ``[p]`` or ``[L, p]`` (per query); end: long ``[]`` or ``[L]`` (per query), or None (``L``).

    Returns:
        ``(rows of the group, sinks [p], segment end)`` for each group (one per segment with merged rows).
    """
    if sinks.dim() == 1 and (end is None or end.dim() == 0):
        return [(rows, sinks, length if end is None else int(end))]
    n = rows.numel()
    per_row_sinks = sinks.to(rows.device)[rows] if sinks.dim() == 2 else sinks.to(rows.device).expand(n, -1)
    per_row_end = torch.full((n,), length, dtype=torch.long, device=rows.device) if end is None else (
        end.to(rows.device)[rows] if end.dim() == 1 else end.to(rows.device).expand(n))
    key = torch.cat([per_row_sinks, per_row_end[:, None]], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    return [(rows[inverse == g], unique[g, :-1], int(unique[g, -1])) for g in range(unique.shape[0])]


class _DenseRows(FutureRows):
    """:class:`FutureRows` over dense masks (the tensors given to :func:`merge_attention`)."""

    def __init__(self, future: torch.Tensor, base: torch.Tensor | None) -> None:
        super().__init__(overlay=None, base=base, length=future.shape[-2], batch_size=future.shape[0], on=future.device)
        object.__setattr__(self, "future", future)

    def rows(self, b: int, rows: torch.Tensor) -> torch.Tensor:
        return self.future[b, 0, rows, : self.length]

    def _future_of_every_row(self, base: torch.Tensor) -> torch.Tensor:
        return self.future[:, 0, :, : self.length]

    def rows_with_future(self, b: int, device, chunk: int = 0) -> torch.Tensor:
        return self.future[b, 0, :, : self.length].any(-1).nonzero().flatten().to(device)
