"""Scaled-dot-product attention with a boolean mask (PyTorch SDPA).

On CPU, a prompt pass of at least :data:`MIN_BLOCKED_ROWS` rows under a mask goes through
:func:`~futuremask.kernels.blocked.blocked_sdpa`, which computes only the key ranges each run of rows
attends (PyTorch would score every pair and convert the whole mask to float); the result is the same.
The mask may be a :class:`~futuremask.kernels.rows.FutureRows` (a prompt pass's mask as the policy's
overlay over the model's own mask): blocked SDPA then plans it a chunk of rows at a time and no
``L x L`` tensor exists; any other path gets it as a dense tensor, built once per forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocked import blocked_sdpa
from .common import as_4d, expand_heads
from .rows import FutureRows

MIN_BLOCKED_ROWS = 512


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | FutureRows | None,
    *,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """``[B, H, Lq, D]``: SDPA of ``q`` over ``k/v`` where ``mask`` (bool, True = attend) allows.

    With ``mask=None`` the rows are causal when ``Lq > 1`` (a prompt pass), unmasked otherwise.
    Rows with no allowed key come out as zeros.
    """
    k, v = expand_heads(q, k, v)
    if isinstance(mask, FutureRows):
        if _use_blocked(q, k, mask, dropout):
            return blocked_sdpa(q, k, v, mask, scale=scale)
        mask = mask.dense()
    mask = as_4d(mask)
    is_causal = mask is None and q.shape[2] > 1
    if _use_blocked(q, k, mask, dropout):
        return blocked_sdpa(q, k, v, mask, scale=scale)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scale
    )


def _use_blocked(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | FutureRows | None, dropout: float) -> bool:
    """Blocked SDPA: CPU inference prompt passes with a shared-over-heads boolean mask."""
    if isinstance(mask, FutureRows):
        shaped = mask.length == q.shape[2] and mask.kv_length == k.shape[2]
    else:
        shaped = mask is not None and mask.dtype == torch.bool and mask.shape[1] == 1 and mask.shape[2] == q.shape[2]
    return (
        shaped
        and q.shape[2] >= MIN_BLOCKED_ROWS
        and q.device.type == "cpu"
        and not dropout
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))
    )
