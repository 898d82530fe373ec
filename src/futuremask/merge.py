"""Light future-aware attention (DESIGN §4): fold the future a policy allows into the sink token.

For one query row ``i`` with scores ``S[i, :]``, the extra future keys ``F_i`` of the policy are
not attended. Instead

* ``kind="kernel"`` (the published ``softmax(B + C(B, mu) + M^c)``): the row's future scores
  ``f_i[t] = S[i, i+1+t]`` (0 where ``i+1+t`` is not in ``F_i``) are pooled over windows of size
  ``kernel`` with stride 1 (one shorter window when fewer than ``kernel`` remain), and the sum of
  the pooled values ``C_i`` is added to the logit of the row's prefix (first valid) position;
* ``kind="lse"`` (mass-preserving): the prefix logit becomes
  ``logsumexp(S[i, prefix], S[i, F_i])``, so every other past key keeps exactly the weight it has
  under the full future-aware mask and the future's mass sits on the sink.

With ``prefix=p > 1`` the windows (``kernel``) or the future keys (``lse``) are split into ``p``
contiguous groups in order (the first groups one longer when they do not divide evenly), and group
``g`` goes to the ``g``-th valid position; groups whose prefix position lies after ``i`` are dropped.

The future of a row ends with its segment (DESIGN §2): ``n_i = P_i - 1 - i`` where ``P_i`` is one past
the last valid position of row ``i``'s segment (``L`` in a plain prefill). A supervised token (a
continuation being scored, an answer token in training) and the start of a packed sequence begin a
new segment, and right padding is not valid, so they add no windows: one forward pass over prompt +
continuation merges exactly as the prefill of the prompt alone does, and each packed sample merges
as it does alone, onto its own sink (the first valid token of its sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .merge_spec import merge_label
from .names import MERGE_KINDS, POOLS


@dataclass(frozen=True)
class Merge:
    """How the future is folded into the sink during prefill.

    Args:
        kind: ``"kernel"`` (the paper's pooled scores) or ``"lse"`` (mass-preserving log-sum-exp).
        kernel: pooling window size (>= 1), used by ``kind="kernel"``.
        pool: ``"max"`` (the paper) or ``"mean"``.
        prefix: number of sink positions that receive the future (>= 1).
    """

    kind: str = "kernel"
    kernel: int = 3
    pool: str = "max"
    prefix: int = 1

    def __post_init__(self) -> None:
        if self.kind not in MERGE_KINDS:
            raise ValueError(f"unknown merge kind {self.kind!r}; choose one of {MERGE_KINDS}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown merge pool {self.pool!r}; choose one of {POOLS}")
        for name in ("kernel", "prefix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Merge.{name} must be an integer >= 1; got {value!r}")

    @classmethod
    def coerce(cls, merge: Merge | str | None) -> Merge | None:
        """Accept a :class:`Merge`, a kind name such as ``"kernel"``, or None."""
        if merge is None or isinstance(merge, Merge):
            return merge
        if isinstance(merge, str):
            return None if merge in ("none", "") else cls(kind=merge)
        raise TypeError(f"merge must be a futuremask.Merge, a kind name or None; got {type(merge).__name__}")


@dataclass(frozen=True)
class PolicyMerge:
    """A policy and an optional merge: what a bench variant or a tuning candidate runs.

    ``merge`` may be given as a kind name (that kind's default :class:`Merge`) and is stored as a Merge.
    """

    policy: str
    merge: Merge | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge", Merge.coerce(self.merge))

    @property
    def label(self) -> str:
        """``policy`` or ``policy+<merge word>`` (:func:`futuremask.merge_spec.merge_label`)."""
        return merge_label(self.policy, self.merge)


def split_groups(index: torch.Tensor, total: torch.Tensor, groups: int) -> torch.Tensor:
    """Group of item ``index`` when ``total`` items are split into ``groups`` contiguous groups in order.

    The first ``total % groups`` groups hold one item more (as ``numpy.array_split``). Broadcasts.
    """
    size = torch.div(total, groups, rounding_mode="floor")
    extra = total - size * groups
    boundary = extra * (size + 1)
    return torch.where(
        index < boundary,
        torch.div(index, size + 1, rounding_mode="floor"),
        extra + torch.div(index - boundary, size.clamp(min=1), rounding_mode="floor"),
    )


def sink_groups(
    rows: torch.Tensor, prefix_positions: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prefix groups whose sink lies inside the sequence, and which rows' sink logits may take them.

    Args:
        rows: long ``[R]``, query positions; prefix_positions: long ``[p]``, the sinks of groups ``0 .. p-1``.

    Returns:
        ``(groups long [g], positions long [g], keep bool [R, g])``: the groups with a position below
        ``length``, those positions, and ``rows >= position`` (a sink after the row takes nothing). The
        caller adds its own conditions to ``keep`` (the row has a future, the sink is attended).
    """
    inside = (prefix_positions < length).nonzero().flatten().to(rows.device)
    positions = prefix_positions.to(rows.device)[inside]
    return inside, positions, rows[:, None] >= positions[None, :]


def merged_logits(
    scores: torch.Tensor,
    base: torch.Tensor,
    future: torch.Tensor,
    rows: torch.Tensor,
    prefix_positions: torch.Tensor,
    merge: Merge,
    prompt_end: int | None = None,
) -> torch.Tensor:
    """Logits of query rows of one sequence after folding their future into the prefix.

    Args:
        scores: float ``[H, R, L]`` scaled scores ``Q K^T`` of the rows against all ``L`` keys.
        base: bool ``[R, L]``, the row's causal (attended) keys.
        future: bool ``[R, L]``, the row's extra future keys ``F_i`` (all ``j > i``).
        rows: long ``[R]``, the absolute query positions ``i``.
        prefix_positions: long ``[p]``, the rows' sink positions (first ``p`` valid tokens of their sequence).
        merge: the merge settings.
        prompt_end: one past the end of the rows' segment (default ``L``); the future windows stop there.

    Returns:
        float ``[H, R, L]``: ``-inf`` off ``base``, the merged value on the prefix positions.
    """
    length = scores.shape[-1]
    logits = scores.masked_fill(~base, float("-inf"))
    n_groups = prefix_positions.numel()
    if merge.kind == "kernel":
        end = length if prompt_end is None else int(prompt_end)
        bonus = _pooled_future(scores, future, rows, merge, n_groups, end)  # [H, R, p]
    else:
        bonus = lse_future(scores, future, n_groups)  # [H, R, p]
    groups, positions, keep = sink_groups(rows, prefix_positions, length)
    keep &= future.any(-1)[:, None] & base[:, positions]  # [R, g]
    for j, (g, pos) in enumerate(zip(groups.tolist(), positions.tolist(), strict=True)):
        col = logits[:, :, pos].clone()  # a copy: logaddexp saves it for backward, and logits is written below
        if merge.kind == "kernel":
            merged = col + bonus[..., g]
        else:
            merged = torch.logaddexp(col, bonus[..., g])
        logits[:, :, pos] = torch.where(keep[:, j], merged, col)
    return logits


def _pooled_future(
    scores: torch.Tensor, future: torch.Tensor, rows: torch.Tensor, merge: Merge, n_groups: int, prompt_end: int
) -> torch.Tensor:
    """``[H, R, p]``: per group, the sum over windows of the pooled future scores (``kind="kernel"``)."""
    length = scores.shape[-1]
    span = max(length - 1, 1)
    t = torch.arange(span, device=scores.device)
    cols = rows[:, None] + 1 + t[None, :]  # [R, T]
    n = (prompt_end - 1 - rows).clamp(min=0)[:, None]  # [R, 1] future length n_i
    inside = t[None, :] < n
    idx = cols.clamp(max=length - 1)
    f_mask = future.gather(-1, idx) & inside
    f = torch.where(f_mask, scores.gather(-1, idx.expand(scores.shape[0], -1, -1)), 0.0)  # [H, R, T]
    k = merge.kernel
    if merge.pool == "max":
        padded = torch.nn.functional.pad(f.masked_fill(~inside, float("-inf")), (0, k - 1), value=float("-inf"))
        pooled = padded.unfold(-1, k, 1).amax(-1)  # [H, R, T], window w starts at t = w
    else:
        padded = torch.nn.functional.pad(f.masked_fill(~inside, 0.0), (0, k - 1), value=0.0)
        pooled = padded.unfold(-1, k, 1).sum(-1) / n.clamp(min=1, max=k)
    in_window, group = window_groups(t[None, :], n, k, n_groups)  # [R, T]
    pooled = torch.where(in_window, pooled, 0.0)
    bonus = torch.stack([torch.where(group == g, pooled, 0.0).sum(-1) for g in range(n_groups)], dim=-1)
    return bonus


def window_groups(
    w: torch.Tensor, n: torch.Tensor, k: int, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which windows a row pools, and the group of each (``kind="kernel"``).

    Args:
        w: long, window index (``t`` for the window over ``f[t .. t+k-1]``; negative: before the row).
        n: long, broadcasting with ``w``: the row's future length ``n_i``; k: the window size.

    Returns:
        ``(in_window bool, group long)``, shaped as ``w``: a row has ``n - k + 1`` windows (one when
        ``0 < n < k``), split into ``n_groups`` contiguous groups by :func:`split_groups`.
    """
    n_windows = torch.where(n >= k, n - k + 1, (n > 0).long())
    return (w >= 0) & (w < n_windows), split_groups(w.clamp(min=0), n_windows, n_groups)


def lse_future(scores: torch.Tensor, future: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``[H, R, p]``: per group, the log-sum-exp of the future scores (``kind="lse"``).

    scores: float ``[H, R, C]``; future: bool ``[R, C]``, the rows' future keys (ranked in column order).
    """
    if n_groups == 1:  # one group: every future key
        return torch.logsumexp(scores.masked_fill(~future, float("-inf")), dim=-1)[..., None]
    rank = torch.cumsum(future.long(), dim=-1) - 1
    group = split_groups(rank, future.sum(-1, keepdim=True), n_groups)
    out = []
    for g in range(n_groups):
        member = future & (group == g)
        out.append(torch.logsumexp(scores.masked_fill(~member, float("-inf")), dim=-1))
    return torch.stack(out, dim=-1)
