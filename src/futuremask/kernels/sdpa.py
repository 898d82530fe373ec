"""Scaled-dot-product attention with a boolean mask (PyTorch SDPA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import as_4d, expand_heads


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """``[B, H, Lq, D]``: SDPA of ``q`` over ``k/v`` where ``mask`` (bool, True = attend) allows.

    With ``mask=None`` the rows are causal when ``Lq > 1`` (a prompt pass), unmasked otherwise.
    Rows with no allowed key come out as zeros.
    """
    k, v = expand_heads(q, k, v)
    mask = as_4d(mask)
    is_causal = mask is None and q.shape[2] > 1
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scale
    )
