"""Kernel-level timing: one attention layer of the model's shape under each variant, nothing else.

The model-level prefill also holds the projections and MLPs, whose cost no mask changes; timing the
attention alone shows how the kernel's cost follows the attended pairs. The layer gets what a model's
layer gets: the model's own mask (None without padding) and the policy's rows
(:class:`~futuremask.kernels.rows.FutureRows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..kernels import blocked, merge_attention, sdpa_attention
from ..kernels.future_runs import future_runs
from ..kernels.rows import FutureRows
from ..layout import TokenLayout, text_config
from ..policies import overlay_mod, policy_mask


def _heads(model) -> tuple[int, int, int, torch.dtype, torch.device]:
    cfg = text_config(model.config)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    param = next(model.parameters())
    return heads, kv_heads, head_dim, param.dtype, param.device


def attention_timer(
    model, layout: TokenLayout, *, seed: int = 0, now: Callable[[], float] = time.perf_counter
) -> Callable:
    """A function ``timer(variant) -> {"attn_ms"}`` timing one attention layer on ``layout``.

    ``attn_ms`` is the SDPA (or merge) call itself; blocked SDPA's plan of the mask, or the merge
    kernel's runs of rows (CPU; once per forward in a model, shared by all layers), are made before
    the clock starts.

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
        # as in a model: the model's own mask (None = is_causal without padding) plus the policy's rows
        base = None if bool(lay.valid.all()) else policy_mask("causal", lay)[:, None]
        overlay = overlay_mod(variant.policy, lay)
        rows = None if overlay is None else FutureRows(overlay, base, lay.length, lay.batch_size, on=device)
        if variant.merge is None:
            mask = base if rows is None else rows
            fn = lambda: sdpa_attention(q, k, v, mask)  # noqa: E731
        else:
            merge = variant.merge
            sinks, ends = lay.sequence_sinks(merge.prefix), lay.segment_end
            fn = lambda: merge_attention(  # noqa: E731
                q, k, v, base, rows, merge=merge, prefix_positions=sinks, prompt_end=ends
            )
        if rows is not None and device.type == "cpu":  # once per forward in a model: timed by the model-level pass
            if variant.merge is None:
                blocked.cached_plan(rows)
            else:
                for b in range(lay.batch_size):
                    future_runs(rows, b, ends[b], sinks[b])
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = now()
        with torch.no_grad():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return {"attn_ms": (now() - start) * 1e3}

    return timer
