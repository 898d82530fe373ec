"""Helpers shared by the kernels."""

from __future__ import annotations

import torch


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, Hkv, L, D]`` -> ``[B, Hkv * n_rep, L, D]``, each key/value head repeated for its query group."""
    if n_rep == 1:
        return x
    b, h, length, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, length, d).reshape(b, h * n_rep, length, d)


def expand_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat grouped key/value heads to the number of query heads."""
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    n_rep = q.shape[1] // k.shape[1]
    return repeat_kv(k, n_rep), repeat_kv(v, n_rep)


def as_4d(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Bool mask ``[B, Lq, Lk]`` or ``[B, 1|H, Lq, Lk]`` -> 4-D."""
    if mask is None or mask.dim() == 4:
        return mask
    if mask.dim() == 3:
        return mask[:, None]
    raise ValueError(f"attention mask must be [B, Lq, Lk] or [B, H, Lq, Lk]; got shape {tuple(mask.shape)}")


def batch_row(mask: torch.Tensor, b: int) -> torch.Tensor:
    """Batch row ``b`` of a mask ``[B, ...]`` as ``[1, ...]``; a mask of batch size 1 (shared by every row) as is."""
    return mask[b : b + 1] if mask.shape[0] > 1 else mask
