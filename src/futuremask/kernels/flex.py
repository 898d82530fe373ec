"""FlexAttention with a ``BlockMask`` (compiled on CUDA, eager elsewhere)."""

from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask
from torch.nn.attention.flex_attention import flex_attention as _flex


@functools.cache
def _compiled():
    return torch.compile(_flex, dynamic=False)


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: BlockMask | None,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """``[B, H, Lq, D]``: FlexAttention of ``q`` over ``k/v`` (grouped heads allowed) under ``block_mask``."""
    fn = _compiled() if q.is_cuda else _flex
    enable_gqa = q.shape[1] != k.shape[1]
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)
