"""Kernel-level timing: one attention layer of the model's shape under each variant, nothing else.

The model-level prefill also holds the projections and MLPs, whose cost no mask changes; timing the
attention alone shows how the kernel's cost follows the attended pairs. The mask is built before
the clock starts (the model builds it once per forward; that time is reported as ``mask_ms``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..kernels import blocked, merge_attention, sdpa_attention
from ..layout import TokenLayout
from ..merge import Merge
from ..policies import policy_mask


def _heads(model) -> tuple[int, int, int, torch.dtype, torch.device]:
    cfg = getattr(model.config, "text_config", None) or model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    param = next(model.parameters())
    return heads, kv_heads, head_dim, param.dtype, param.device


def attention_timer(
    model, layout: TokenLayout, *, seed: int = 0, now: Callable[[], float] = time.perf_counter
) -> Callable:
    """A function ``timer(variant) -> {"attn_ms"}`` timing one attention layer on ``layout``.

    ``attn_ms`` is the SDPA (or merge) call itself; blocked SDPA's plan of the mask (CPU; once per
    forward in a model, shared by all layers) is made before the clock starts.

    Queries ``[B, H, L, D]`` and keys/values ``[B, Hkv, L, D]`` are random, with the model's head
    counts, head size, dtype and device. ``now`` is the clock (wall or CPU time).
    """
    heads, kv_heads, head_dim, dtype, device = _heads(model)
    gen = torch.Generator().manual_seed(seed)
    shape = (layout.batch_size, heads, layout.length, head_dim)
    kv_shape = (layout.batch_size, kv_heads, layout.length, head_dim)
    q = torch.randn(shape, generator=gen).to(device, dtype)
    k = torch.randn(kv_shape, generator=gen).to(device, dtype)
    v = torch.randn(kv_shape, generator=gen).to(device, dtype)
    lay = layout.to(device)

    def timer(variant) -> float:
        base = policy_mask("causal", lay)[:, None]
        if variant.merge is None:
            mask = (
                None
                if variant.policy == "causal" and bool(lay.valid.all())
                else policy_mask(variant.policy, lay)[:, None]
            )
            del base
            fn = lambda: sdpa_attention(q, k, v, mask)  # noqa: E731
        else:
            future = policy_mask(variant.policy, lay)[:, None] & ~base
            merge = Merge(kind=variant.merge)
            sinks = lay.sink_positions(merge.prefix)
            fn = lambda: merge_attention(q, k, v, base, future, merge=merge, prefix_positions=sinks)  # noqa: E731
        if variant.merge is None and mask is not None and device.type == "cpu":
            blocked.cached_plan(mask)  # once per forward in the model: timed by the model-level pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = now()
        with torch.no_grad():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return {"attn_ms": (now() - start) * 1e3}

    return timer
