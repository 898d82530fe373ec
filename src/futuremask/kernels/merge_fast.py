"""Fast inference path of the merge kernel: correct the causal output at the sink instead of re-attending.

A merged row differs from its causal row in one logit per prefix (sink) position ``p``: ``s_p``
becomes ``s'_p`` (``s_p + C`` for ``kind="kernel"``, ``logaddexp(s_p, C)`` for ``"lse"``). With the
causal output ``o`` and the log-sum-exp ``l`` of the causal logits, the merged output is exactly

    out = (o + sum_p (e^(s'_p - l) - e^(s_p - l)) v_p) / (1 + sum_p (e^(s'_p - l) - e^(s_p - l)))

so a merged row needs its scores only for ``l``, the bonus and the sink logits: no second softmax
over the row and no ``weights @ V`` product. The formula subtracts the sinks' old share; where that
share was nearly all of the row's mass and the new one is small (denominator below
:data:`MIN_DENOMINATOR`), the row is flagged so the caller recomputes it exactly.

The bonus is computed on absolute key positions: ``f[j] = S[i, j]`` on the row's future keys and 0
elsewhere, pooled over the windows ``j .. j+k-1`` that start after ``i`` -- the same windows as
:func:`futuremask.merge.merged_logits`, without building the per-row shifted copy of the scores.
"""

from __future__ import annotations

import torch

from ..merge import Merge, lse_future, sink_groups, window_groups

MIN_DENOMINATOR = 0.5


def future_bonus(
    scores: torch.Tensor,
    future: torch.Tensor,
    rows: torch.Tensor,
    merge: Merge,
    n_groups: int,
    prompt_end: int,
) -> torch.Tensor:
    """``[H, R, p]``: what each row's future adds to each of its ``p`` prefix positions.

    Args:
        scores: float ``[H, R, L]`` scaled scores of rows ``rows`` (long ``[R]``) against all keys.
        future: bool ``[R, L]``, the rows' extra future keys (all ``j > i``, all ``j < prompt_end``).
        merge, n_groups, prompt_end: as in :func:`futuremask.merge.merged_logits`.
    """
    if merge.kind == "lse":
        return lse_future(scores, future, n_groups)
    end = prompt_end
    lo = min(int(rows.min()) + 1, end) if rows.numel() else end  # no window starts before the first row's future
    f = torch.where(future[:, lo:end], scores[..., lo:end], 0.0)  # [H, R, E - lo]
    return pooled_groups(f, torch.arange(lo, end, device=scores.device), rows, end, merge, n_groups)


def pooled_groups(
    f: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, end: int, merge: Merge, n_groups: int
) -> torch.Tensor:
    """float ``[H, R, p]``: per group, the sum of the pooled windows of ``f`` on absolute key ``positions``.

    Args:
        f: float ``[H, R, C]``, the rows' future scores on the columns ``positions`` (long ``[C]``,
            ascending), 0 where not a future key; every window a row needs lies on consecutive columns.
        rows: long ``[R]``, the query positions; end: their future end ``P``.

    Broadcasts over leading batch dimensions: ``f [..., H, R, C]`` with rows ``[..., 1, R]`` and
    ``end`` an int or long ``[..., 1, R]`` (per row) give ``[..., H, R, p]``.
    """
    weights = window_weights(positions, rows, end, merge, n_groups, f.dtype)  # [p, ..., R, C]
    pooled = pool_windows(f, merge)
    return torch.stack([torch.einsum("...rc,...rc->...r", pooled, w) for w in weights], -1)


def pool_windows(f: torch.Tensor, merge: Merge) -> torch.Tensor:
    """``[..., C]``: at column ``c`` the max (or the sum) of ``f`` over ``c .. c+k-1``, clipped at the last column."""
    kernel, width = merge.kernel, f.shape[-1]
    pooled = f.clone()
    for d in range(1, min(kernel, width)):
        head = pooled[..., : width - d]
        if merge.pool == "max":
            torch.maximum(head, f[..., d:], out=head)
        else:
            head += f[..., d:]
    return pooled


def window_weights(
    positions: torch.Tensor, rows: torch.Tensor, end: int | torch.Tensor, merge: Merge, n_groups: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[p, ..., R, C]`` of ``dtype``: per group, each window's weight in the bonus (``1``, or ``1 / min(n, k)`` for a mean).

    The window of a row at column ``c`` starts at key ``positions[c]``; shapes as in :func:`pooled_groups`.
    """
    kernel = merge.kernel
    n = (end - 1 - rows).clamp(min=0)[..., None]  # [..., R, 1] future length n_i
    in_window, group = window_groups(positions - (rows[..., None] + 1), n, kernel, n_groups)  # [..., R, C]
    weight = in_window.to(dtype)
    if merge.pool != "max":
        weight = weight / n.clamp(min=1, max=kernel)
    if n_groups == 1:
        return weight[None]
    return torch.stack([weight * (group == g) for g in range(n_groups)])


def corrected_rows(
    causal_out: torch.Tensor,
    scores: torch.Tensor,
    base: torch.Tensor,
    future: torch.Tensor,
    rows: torch.Tensor,
    prefix_positions: torch.Tensor,
    merge: Merge,
    values: torch.Tensor,
    prompt_end: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged outputs of ``rows`` from their causal outputs, and which rows to recompute exactly.

    Args:
        causal_out: ``[H, R, D]``, the rows' attention over ``base`` (any float dtype).
        scores: float ``[H, R, L]`` scaled scores; base/future: bool ``[R, L]``; rows: long ``[R]``.
        prefix_positions: long ``[p]``; values: float ``[H, L, D]`` (same dtype as ``scores``).

    Returns:
        ``(out [H, R, D] in the dtype of scores, exact bool [R])``: rows where ``exact`` is True must be
        recomputed with :func:`futuremask.merge.merged_logits` (their denominator was too small).
    """
    length = scores.shape[-1]
    seen = base.any(0).nonzero()
    hi = int(seen.max()) + 1 if seen.numel() else 1  # keys after every row's last attended key do not count
    lse = torch.logsumexp(scores[..., :hi].masked_fill(~base[:, :hi], float("-inf")), dim=-1)  # [H, R]
    bonus = future_bonus(scores, future, rows, merge, prefix_positions.numel(), prompt_end)
    groups, positions, keep = sink_groups(rows, prefix_positions, length)
    keep &= future.any(-1)[:, None] & base[:, positions]
    sink_scores = scores[:, :, positions] if positions.numel() else None
    return sink_correction(causal_out, lse, sink_scores, bonus[..., groups], keep, values[:, None, positions], merge)


def sink_correction(
    causal_out: torch.Tensor,
    lse: torch.Tensor,
    sink_scores: torch.Tensor | None,
    bonus: torch.Tensor,
    keep: torch.Tensor | None,
    sink_values: torch.Tensor,
    merge: Merge,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged outputs from causal outputs: the formula of the module docstring.

    Args:
        causal_out: ``[H, R, D]``; lse: float ``[H, R]``, log-sum-exp of the rows' causal logits.
        sink_scores: float ``[H, R, g]``, the rows' scaled scores at their ``g`` sink positions (None: no sink).
        bonus: float ``[H, R, g]``, what the future adds per sink (:func:`future_bonus`).
        keep: bool ``[R, g]``, where the sink is attended and receives a future.
        sink_values: float ``[H, 1, g, D]``, the values at the sinks (``[H, R, g, D]``: each row's own).

    Broadcasts over leading batch dimensions (``[..., H, R, D]`` and so on, keep ``[..., 1, R, g]``).

    Returns:
        ``(out [H, R, D] in the dtype of lse, exact bool [R])``: rows to recompute exactly (too small a
        denominator) are flagged.
    """
    out = causal_out.to(lse.dtype)
    if sink_scores is None:
        return out, torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
    new = sink_scores + bonus if merge.kind == "kernel" else torch.logaddexp(sink_scores, bonus)
    old = torch.where(keep, sink_scores - lse[..., None], float("-inf"))  # [H, R, g]
    new = torch.where(keep, new - lse[..., None], float("-inf"))
    top = new.amax(-1).clamp(min=0.0).nan_to_num(0.0)  # rescale when a new sink logit dominates
    delta = (torch.exp(new - top[..., None]) - torch.exp(old - top[..., None])).nan_to_num(0.0)  # [H, R, g]
    denominator = torch.exp(-top) + delta.sum(-1)  # [H, R]
    numerator = out * torch.exp(-top)[..., None] + (delta[..., None] * sink_values).sum(-2)
    exact = ((top == 0) & (denominator < MIN_DENOMINATOR)).any(-2)  # [R]: any head
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return numerator / safe[..., None], exact
