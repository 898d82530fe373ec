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
    sinks = [int(p) for p in prefix_positions if int(p) < length]
    keep = torch.stack([(rows >= p) & has_future & base[:, p] for p in sinks], -1) if sinks else None
    sink_scores = scores[:, :, sinks] if sinks else None
    return sink_correction(causal_out, lse, sink_scores, bonus[..., : len(sinks)], keep, values[:, sinks], merge)


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
        sink_values: float ``[H, g, D]``, the values at the sinks.

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
    numerator = out * torch.exp(-top)[..., None] + torch.einsum("hrg,hgd->hrd", delta, sink_values)
    exact = ((top == 0) & (denominator < MIN_DENOMINATOR)).any(0)  # [R]
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return numerator / safe[..., None], exact


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


def run_bonus(
    scores: torch.Tensor, real: torch.Tensor, rows: torch.Tensor, end: int, merge: Merge, n_groups: int
) -> torch.Tensor:
    """``[H, R, p]``: what each row's future adds to each prefix position, from its future scores alone.

    Args:
        scores: float ``[H, C, R]`` (columns first: the product is faster that way round on CPU), the
            rows' scaled scores on the columns ``real`` (long ``[C]``, ascending key positions): for
            ``kind="kernel"`` those of :func:`window_columns`, 0 where not a key; for ``"lse"`` the
            run's future keys. Overwritten (used as scratch space).
        rows: long ``[R]``, ascending query positions of one run; end: their future end ``P``.

    Row ``i``'s future is the columns after ``i``; only the first ``m`` columns (up to the last row)
    differ from row to row, so only they are masked per row.
    """
    if n_groups > 1:
        return _grouped_bonus(scores.transpose(1, 2), real, rows, end, merge, n_groups)
    m = int(torch.searchsorted(real, rows[-1], right=True))  # columns not after every row
    after = real[:m, None] > rows[None, :]  # [m, R]
    if merge.kind == "lse":
        scores[:, :m].masked_fill_(~after, float("-inf"))
        top = scores.amax(1, keepdim=True)
        return (top + torch.log(scores.sub_(top).exp_().sum(1, keepdim=True))).transpose(1, 2)
    k, width = merge.kernel, scores.shape[1]
    full = width - k + 1  # columns where a whole window starts
    pooled = scores[:, :full].clone() if k == 1 else None
    for d in range(1, k if full > 0 else 0):  # window at column c covers c .. c+k-1
        if pooled is None:
            pooled = (torch.maximum if merge.pool == "max" else torch.add)(scores[:, :full], scores[:, 1 : 1 + full])
        elif merge.pool == "max":
            torch.maximum(pooled, scores[:, d : d + full], out=pooled)
        else:
            pooled += scores[:, d : d + full]
    hi = int(torch.searchsorted(real, end - k, right=True))  # windows start at or before P - k ...
    lo = min(m, hi)  # ... and after the row: a per-row mask on the first columns only
    bonus = torch.zeros(scores.shape[0], scores.shape[2], dtype=scores.dtype, device=scores.device)
    if hi > 0 and full > 0:
        bonus += torch.einsum("hcr,cr->hr", pooled[:, :lo], after[:lo].to(scores.dtype))
        bonus += pooled[:, lo:hi].sum(1)
    if merge.pool != "max":
        bonus /= k
    if int(rows[-1]) >= end - k:  # rows whose one window is shorter than k
        for j in ((end - 1 - rows) < k).nonzero().flatten().tolist():
            vals = scores[:, real > rows[j], j]
            n = end - 1 - int(rows[j])
            bonus[:, j] = vals.amax(-1) if merge.pool == "max" else vals.sum(-1) / n
    return bonus[..., None]


def _grouped_bonus(
    scores: torch.Tensor, real: torch.Tensor, rows: torch.Tensor, end: int, merge: Merge, n_groups: int
) -> torch.Tensor:
    """:func:`run_bonus` for ``prefix > 1``: the future split into ``n_groups`` groups, one per sink."""
    after = real[None, :] > rows[:, None]  # [R, C]
    if merge.kind == "lse":
        member = scores.masked_fill(~after, float("-inf"))
        rank = torch.cumsum(after.long(), dim=-1) - 1
        group = split_groups(rank, after.sum(-1, keepdim=True), n_groups)
        return torch.stack(
            [torch.logsumexp(member.masked_fill(group != g, float("-inf")), dim=-1) for g in range(n_groups)],
            -1,
        )
    k, width = merge.kernel, scores.shape[-1]
    pooled = scores.clone()
    for d in range(1, min(k, width)):  # window at column c covers c .. c+k-1 (clipped at the end)
        head = pooled[..., : width - d]
        if merge.pool == "max":
            torch.maximum(head, scores[..., d:], out=head)
        else:
            head += scores[..., d:]
    n = (end - 1 - rows).clamp(min=0)[:, None]  # [R, 1] future length n_i
    n_windows = torch.where(n >= k, n - k + 1, (n > 0).long())
    w = real[None, :] - (rows[:, None] + 1)  # window index of each start
    weight = ((w >= 0) & (w < n_windows)).to(scores.dtype)
    if merge.pool != "max":
        weight = weight / n.clamp(min=1, max=k)
    group = split_groups(w.clamp(min=0), n_windows, n_groups)
    return torch.stack([torch.einsum("hrc,rc->hr", pooled, weight * (group == g)) for g in range(n_groups)], -1)
