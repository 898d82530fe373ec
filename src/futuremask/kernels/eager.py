"""Eager attention: explicit scores and softmax, returning the attention weights too."""

from __future__ import annotations

import torch

from .common import as_4d, expand_heads


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(out [B, H, Lq, D], weights [B, H, Lq, Lk])``.

    Scores are ``q k^T * scale`` (``scale`` defaults to ``D ** -0.5``), capped to
    ``softcap * tanh(scores / softcap)`` when ``softcap`` is given (Gemma2), masked where ``mask`` (bool,
    True = attend) is False, soft-maxed in float32. ``mask=None`` means causal when ``Lq > 1``.
    Rows with no allowed key get zero weights.
    """
    k, v = expand_heads(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    mask = as_4d(mask)
    if mask is None and q.shape[2] > 1:
        lq, lk = q.shape[2], k.shape[2]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)[None, None]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(q.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=training)
    return torch.matmul(weights, v), weights
