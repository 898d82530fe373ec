"""Attention kernels: pure torch functions over ``q [B, H, L, D]``, ``k/v [B, Hkv, Lk, D]``.

Each takes a boolean mask (True = attend) built once per forward by the model integration; none of
them knows about transformers or about policies.
"""

from .eager import eager_attention
from .flex import flex_attention
from .merge import merge_attention
from .sdpa import sdpa_attention

__all__ = ["eager_attention", "flex_attention", "merge_attention", "sdpa_attention"]
