"""Merge attention: causal attention whose future is folded into the sink (DESIGN §4), in row chunks.

Rows with no future keys (all text rows under the future-aware policies) go through SDPA with the
causal mask; only rows with future keys get explicit scores, a chunk of rows at a time, so no
per-head ``L x L`` score tensor is ever held. Without autograd, a merged row is the causal row
corrected at its sink positions (:mod:`.merge_fast`), which needs no second pass over the values.
"""

from __future__ import annotations

import torch

from ..merge import Merge, merged_logits
from .common import as_4d, expand_heads
from .merge_fast import corrected_rows
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
    out = sdpa_attention(q, k, v, base4, scale=scale)
    if out.requires_grad:
        out = out.clone()  # the merged rows are written in place below
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = expand_heads(q, k, v)
    heads, length = q.shape[1], k.shape[2]
    chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    rows_per_chunk = max(1, chunk_bytes // (4 * 6 * heads * length))
    for b in range(q.shape[0]):
        rows = future.rows_with_future(b, q.device)
        acc = torch.promote_types(q.dtype, torch.float32)  # scores in float32 at least
        kf, vf = k[b].to(acc), v[b].to(acc)
        end_b = None if prompt_end is None else prompt_end[b]
        for group, sinks, end in _row_groups(rows, prefix_positions[b], end_b, length):
            for start in range(0, group.numel(), rows_per_chunk):
                r = group[start : start + rows_per_chunk]
                base_r, fut_r = future.base_rows(b, r), future.rows(b, r)
                scores = torch.matmul(q[b, :, r].to(acc), kf.transpose(-1, -2)) * scale
                if not out.requires_grad:  # inference: correct the causal rows at the sinks (merge_fast.py)
                    merged, exact = corrected_rows(out[b, :, r], scores, base_r, fut_r, r, sinks, merge, vf, end)
                    out[b, :, r] = merged.to(out.dtype)
                    r, scores, base_r, fut_r = r[exact], scores[:, exact], base_r[exact], fut_r[exact]
                    if r.numel() == 0:
                        continue
                logits = merged_logits(scores, base_r, fut_r, r, sinks, merge, end)
                weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
                out[b, :, r] = torch.matmul(weights, vf).to(out.dtype)
    return out


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
        super().__init__(overlay=None, base=base, length=future.shape[-2], batch_size=future.shape[0])
        object.__setattr__(self, "future", future)

    def rows(self, b: int, rows: torch.Tensor) -> torch.Tensor:
        return self.future[b, 0, rows, : self.length]

    def rows_with_future(self, b: int, device, chunk: int = 0) -> torch.Tensor:
        return self.future[b, 0, :, : self.length].any(-1).nonzero().flatten().to(device)
