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

from ..merge import Merge, split_groups

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
        member = scores.masked_fill(~future, float("-inf"))
        if n_groups == 1:
            return torch.logsumexp(member, dim=-1, keepdim=True)
        rank = torch.cumsum(future.long(), dim=-1) - 1
        group = split_groups(rank, future.sum(-1, keepdim=True), n_groups)
        return torch.stack(
            [torch.logsumexp(member.masked_fill(group != g, float("-inf")), dim=-1) for g in range(n_groups)],
            -1,
        )
    end, k = prompt_end, merge.kernel
    lo = (
        min(int(rows.min()) + 1, end) if rows.numel() else end
    )  # no window starts before the first row's future
    is_max = merge.pool == "max"
    f = torch.where(future[:, lo:end], scores[..., lo:end], 0.0)  # [H, R, E - lo]
    pooled = f.clone()
    width = end - lo
    for d in range(1, min(k, width)):  # window starting at j covers j .. j+k-1 (clipped at the prompt's end)
        head = pooled[..., : width - d]
        if is_max:
            torch.maximum(head, f[..., d:], out=head)
        else:
            head += f[..., d:]
    n = (end - 1 - rows).clamp(min=0)[:, None]  # [R, 1] future length n_i
    n_windows = torch.where(n >= k, n - k + 1, (n > 0).long())
    w = torch.arange(lo, end, device=scores.device)[None, :] - (
        rows[:, None] + 1
    )  # window index of each start
    in_window = (w >= 0) & (w < n_windows)
    weight = in_window.to(scores.dtype)
    if not is_max:
        weight = weight / n.clamp(min=1, max=k)
    if n_groups == 1:
        return torch.einsum("hrj,rj->hr", pooled, weight)[..., None]
    group = split_groups(w.clamp(min=0), n_windows, n_groups)
    return torch.stack(
        [torch.einsum("hrj,rj->hr", pooled, weight * (group == g)) for g in range(n_groups)], -1
    )


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
    has_future = future.any(-1)
    olds, news, cols = [], [], []
    for g in range(prefix_positions.numel()):
        pos = int(prefix_positions[g])
        if pos >= length:
            continue
        keep = (rows >= pos) & has_future & base[:, pos]  # [R]
        old = scores[:, :, pos]
        new = old + bonus[..., g] if merge.kind == "kernel" else torch.logaddexp(old, bonus[..., g])
        olds.append(torch.where(keep, old - lse, float("-inf")))
        news.append(torch.where(keep, new - lse, float("-inf")))
        cols.append(pos)
    out = causal_out.to(scores.dtype)
    if not cols:
        return out, torch.zeros_like(rows, dtype=torch.bool)
    old, new = torch.stack(olds, -1), torch.stack(news, -1)  # [H, R, g]
    top = new.amax(-1).clamp(min=0.0).nan_to_num(0.0)  # rescale when a new sink logit dominates
    delta = (torch.exp(new - top[..., None]) - torch.exp(old - top[..., None])).nan_to_num(0.0)  # [H, R, g]
    denominator = torch.exp(-top) + delta.sum(-1)  # [H, R]
    numerator = out * torch.exp(-top)[..., None] + torch.einsum("hrg,hgd->hrd", delta, values[:, cols])
    exact = ((top == 0) & (denominator < MIN_DENOMINATOR)).any(0)  # [R]
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return numerator / safe[..., None], exact
