"""Merge attention of a small prompt pass: the merged rows of every batch row at once, in batched tensor ops.

The run path of :mod:`.merge` handles one run of rows (an image, a text stretch) of one batch row at
a time, so its cost has a per-run part (a dozen small tensor calls, about a millisecond on a CPU)
that no batch amortises, and an eval batch of short prompts (about a hundred tokens, several images
each) is nearly all per-run part. When the pass's scores are small (:func:`fits_dense`), this path
gathers the rows that have future keys from every batch row (:class:`MergedRows`, found once per
forward) and merges them all in a fixed number of tensor operations per layer, each row with its
own sinks and segment end (DESIGN §4), whatever the batch size or the number of runs:

* :func:`merge_rows_corrected` (CPU inference, one prefix position): the causal rows corrected at
  their sink (the formula of :mod:`.merge_fast`); ``lse`` takes each row's future log-sum-exp from
  the fused flash kernel under an additive mask, ``kernel`` pools the row's scores on absolute key
  positions.
* :func:`merge_rows_dense` (elsewhere, and for the rows the formula cannot serve): the rows' merged
  logits, re-attended.

The other rows keep the causal output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..merge import Merge, lse_future
from .common import expand_heads
from .merge_fast import pool_windows, sink_correction, window_weights
from .rows import FutureRows

DENSE_BYTES = 4 * 2**20  # the largest pass (float scores of every row, every head) computed this way
PAST_END = -1e30  # finite: a pooled window times a zero weight must stay 0


def fits_dense(q: torch.Tensor, limit: int) -> bool:
    """Whether the float scores of ``q [B, H, L, D]`` against its ``L`` keys fit both ``limit`` and
    :data:`DENSE_BYTES` (read at call time)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    size = q.shape[0] * q.shape[1] * q.shape[2] ** 2 * acc.itemsize
    return size <= min(limit, DENSE_BYTES)


@dataclass(frozen=True)
class MergedRows:
    """The query rows with future keys of each batch row, ``R`` per batch row (the most any has).

    A batch row with fewer is padded with one of its rows that has no future (``real`` False there),
    so no position is written twice with different values.

    Attributes:
        index: long ``[B, R]``, the rows' positions.
        real: bool ``[B, R]``, False on padding.
        attend: bool ``[B, R, L]``, their causal keys; future: bool ``[B, R, L]``, their future keys.
        sinks: long ``[B, R, p]``, their sink positions; ends: long ``[B, R]``, their segment ends.
    """

    index: torch.Tensor
    real: torch.Tensor
    attend: torch.Tensor
    future: torch.Tensor
    sinks: torch.Tensor
    ends: torch.Tensor
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def flat(self, heads: int, sinks: bool = False) -> torch.Tensor:
        """long ``[B, H, R]``: each row's (or its sink's) index among the ``B * H * L`` rows of a ``[B, H, L, ...]`` tensor."""
        key = ("flat", heads, sinks)
        if key not in self.memo:
            batch, length = self.index.shape[0], self.future.shape[-1]
            device = self.index.device
            first = (torch.arange(batch, device=device)[:, None] * heads + torch.arange(heads, device=device)) * length
            self.memo[key] = first[..., None] + (self.sink_index if sinks else self.index)[:, None, :]
        return self.memo[key]

    @cached_property
    def sink_index(self) -> torch.Tensor:
        """long ``[B, R]``: the row's sink position, clamped into the pass (see :attr:`keep`)."""
        return self.sinks[..., 0].clamp(max=self.future.shape[-1] - 1)

    @cached_property
    def keep(self) -> torch.Tensor:
        """bool ``[B, R]``: real rows whose (first) sink lies in the pass, at or before them, and is attended."""
        sink = self.sinks[..., 0]
        return self.real & (sink <= self.index) & self.attend.gather(2, self.sink_index[..., None])[..., 0]

    def subset(self, rows: torch.Tensor) -> MergedRows:
        """The entries where ``rows`` (bool ``[B, R]``) is True, each batch row padded with its other entries.

        Those are rows outside the subset, so (as every padding) they only rewrite their own output.
        """
        counts = rows.sum(1)
        width = max(1, int(counts.max()))
        order = torch.argsort((~rows).long(), dim=1, stable=True)[:, :width]  # the subset first, in order

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.gather(1, order.view(*order.shape, *[1] * (t.dim() - 2)).expand(-1, -1, *t.shape[2:]))

        real = torch.arange(width, device=rows.device) < counts[:, None]
        return MergedRows(pick(self.index), real, pick(self.attend), pick(self.future) & real[..., None],
                          pick(self.sinks), pick(self.ends))

    def window_weights(self, merge: Merge, dtype: torch.dtype) -> torch.Tensor:
        """``[p, B, 1, R, L]``: per prefix group, each window's weight in the row's bonus (``kind="kernel"``)."""
        key = (merge.kernel, merge.pool, merge.prefix, dtype)
        if key not in self.memo:
            keys = torch.arange(self.future.shape[-1], device=self.future.device)
            self.memo[key] = window_weights(keys, self.index[:, None], self.ends[:, None], merge, merge.prefix, dtype)
        return self.memo[key]

    @cached_property
    def future_bias(self) -> torch.Tensor:
        """float ``[B, 1, R, L]``: 0 on the future keys, ``-inf`` elsewhere (an additive attention mask)."""
        return torch.zeros(self.future.shape, device=self.future.device).masked_fill_(~self.future, float("-inf"))[:, None]

    @cached_property
    def on_future(self) -> torch.Tensor:
        """float ``[B, 1, R, L]``: 1 on the future keys (all before the row's segment end), 0 elsewhere."""
        return self.future.float()[:, None]

    @cached_property
    def past_end(self) -> torch.Tensor:
        """float ``[B, 1, R, L]``: 0 before the row's segment end and a huge negative after it.

        Added to the scores before a max-pool, so a row's last window (shorter than the kernel) never
        takes the zeros after its end; every window a row pools holds a key before the end, so the
        sentinel itself is never pooled.
        """
        keys = torch.arange(self.future.shape[-1], device=self.future.device)
        return torch.where(keys < self.ends[..., None], 0.0, PAST_END)[:, None]


def merged_rows(rows: FutureRows, sinks: torch.Tensor, ends: torch.Tensor) -> MergedRows:
    """The :class:`MergedRows` of a prompt pass (memoised on ``rows``: every layer asks the same).

    Args:
        sinks: long ``[B, L, p]``; ends: long ``[B, L]``, per query row.
    """
    key = ("merged_rows", sinks.shape[-1])
    if key in rows.memo:
        return rows.memo[key]
    base, future = rows.whole()
    batch, length = future.shape[:2]
    every = MergedRows(torch.arange(length, device=future.device).expand(batch, -1),
                       torch.ones(batch, length, dtype=torch.bool, device=future.device), base, future, sinks, ends)
    chosen = every.subset(future.any(-1))  # padded with rows that have no future
    rows.memo[key] = chosen
    return chosen


def merge_rows_dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, chosen: MergedRows, merge: Merge, scale: float
) -> torch.Tensor:
    """``out`` with the ``chosen`` rows replaced by their merged attention (written in place).

    Args:
        q: ``[B, H, L, D]``; k, v: ``[B, Hkv, L, D]``; out: ``[B, H, L, D]``, the causal attention.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    k, v = expand_heads(q, k, v)
    batch, heads, length, dim = q.shape
    where = chosen.index[:, None, :, None].expand(batch, heads, -1, dim)  # [B, H, R, D]
    scores = torch.matmul(q.gather(2, where).to(acc), k.to(acc).transpose(-1, -2)).mul_(scale)  # [B, H, R, L]
    if merge.kind == "kernel":
        bonus = _window_bonus(scores * chosen.on_future, chosen, merge)  # [B, H, R, p]
    else:
        bonus = lse_future(scores, chosen.future[:, None], merge.prefix)
    logits = scores.masked_fill(~chosen.attend[:, None], float("-inf"))
    keys = torch.arange(length, device=q.device)
    for g in range(merge.prefix):
        sink = chosen.sinks[..., g]  # [B, R] (L: no such sink, so no column)
        at_sink = keys == sink[..., None]  # [B, R, L]
        take = at_sink & chosen.attend & ((sink <= chosen.index) & chosen.real)[..., None]
        col = logits.gather(-1, sink.clamp(max=length - 1)[:, None, :, None].expand(-1, heads, -1, 1))  # the sink logit
        merged = col + bonus[..., g, None] if merge.kind == "kernel" else torch.logaddexp(col, bonus[..., g, None])
        logits = torch.where(take[:, None], merged, logits)
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row with no key: zeros, as the definition
    new = torch.matmul(weights, v.to(acc)).to(out.dtype)
    new = torch.where(chosen.real[:, None, :, None], new, out.gather(2, where))  # padding keeps its row
    return out.scatter_(2, where, new)


def merge_rows_corrected(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, chosen: MergedRows,
    merge: Merge, scale: float,
) -> torch.Tensor:
    """CPU, one prefix position: ``out`` with the ``chosen`` rows merged by correcting them at their sink.

    The formula of :mod:`.merge_fast`, batched: each row needs its future's bonus (``lse``: the
    log-sum-exp of its future scores, from the fused flash kernel under an additive mask; ``kernel``:
    its pooled windows on absolute key positions), its sink score and the sink's value. Rows the
    formula cannot serve (their sink loses nearly all its mass) are recomputed by
    :func:`merge_rows_dense`.

    Args:
        out: ``[B, H, L, D]``, the causal attention; lse: float ``[B, H, L]``, its log-sum-exp per row.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    k, v = expand_heads(q, k, v)
    kf, out = k.to(acc), out.contiguous()  # written through a flat view below
    heads = q.shape[1]
    at, sinks = chosen.flat(heads), chosen.flat(heads, sinks=True)
    qr = _pick(q, at).to(acc)  # [B, H, R, D]
    if merge.kind == "lse":
        _, bonus = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qr, kf, kf, 0.0, False, attn_mask=chosen.future_bias.to(acc), scale=scale)  # [B, H, R]
        # (the mask in the queries' dtype: the CPU kernel misreads a float32 mask beside float64 queries)
    else:
        scores = torch.matmul(qr, kf.transpose(-1, -2)).mul_(scale)  # [B, H, R, L]
        bonus = _window_bonus(scores.mul_(chosen.on_future), chosen, merge)[..., 0]  # [B, H, R]
    sink_scores = (qr * _pick(kf, sinks)).sum(-1, keepdim=True).mul_(scale)  # [B, H, R, 1]
    causal = _pick(out, at)
    merged, exact = sink_correction(causal, _pick(lse, at).to(acc), sink_scores, bonus[..., None],
                                    chosen.keep[:, None, :, None], _pick(v, sinks).to(acc)[..., None, :], merge)
    merged = torch.where(chosen.real[:, None, :, None], merged.to(out.dtype), causal)
    out.view(-1, out.shape[-1]).index_copy_(0, at.flatten(), merged.reshape(-1, out.shape[-1]))  # padding: its own row
    exact &= chosen.real
    if exact.any():
        merge_rows_dense(q, k, v, out, chosen.subset(exact), merge, scale)
    return out


def _window_bonus(f: torch.Tensor, chosen: MergedRows, merge: Merge) -> torch.Tensor:
    """float ``[B, H, R, p]``: the rows' pooled windows summed per prefix group (``kind="kernel"``).

    f: float ``[B, H, R, L]``, the rows' scaled scores on their future keys and 0 elsewhere (written over).
    """
    if merge.pool == "max":
        f += chosen.past_end
    pooled = pool_windows(f, merge)
    *first, last = chosen.window_weights(merge, f.dtype)
    # the last group weighs pooled in place: a fresh [B, H, R, L] tensor costs page faults here
    return torch.stack([(pooled * w).sum(-1) for w in first] + [pooled.mul_(last).sum(-1)], -1)


def _pick(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """``[B, H, R, ...]``: the rows ``at`` (:meth:`MergedRows.flat`, ``[B, H, R]``) of ``x [B, H, L, ...]``."""
    return x.reshape(-1, *x.shape[3:]).index_select(0, at.flatten()).view(*at.shape, *x.shape[3:])
