"""Reference attention for one layer under a policy (and optionally a merge): the oracle of the kernels.

A merge is computed from the math of :mod:`futuremask.merge`, one query row at a time; none of the
fast paths of :mod:`futuremask.kernels.merge` (row chunks, the sink correction) is used here.
"""

from __future__ import annotations

import torch

from .kernels import eager_attention
from .kernels.common import expand_heads
from .layout import TokenLayout
from .merge import Merge, merged_logits
from .policies import get_policy, policy_mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    policy: str,
    is_visual: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
    merge: Merge | str | None = None,
    scale: float | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one prompt pass under ``policy``, computed in float32 (or float64 for float64 inputs).

    Args:
        q: ``[B, H, L, D]``; k, v: ``[B, Hkv, L, D]`` (``H`` a multiple of ``Hkv``; grouped heads repeat).
        policy: a name from :data:`futuremask.POLICIES`.
        is_visual: bool ``[L]`` or ``[B, L]``.
        attention_mask: 0/1 ``[B, L]``; prompt_mask: bool ``[B, L]`` (default: all valid).
        merge: fold the policy's future into the sink instead of attending it (:class:`Merge`).
        scale: defaults to ``D ** -0.5``.
        position_ids: long ``[B, L]``, packed sequences (as :func:`futuremask.build_mask`).

    Returns:
        ``[B, H, L, D]`` in the dtype of ``q``.
    """
    merge = Merge.coerce(merge)
    is_visual = torch.as_tensor(is_visual, device=q.device).bool()
    if is_visual.dim() == 1:
        is_visual = is_visual.expand(q.shape[0], -1)
    layout = TokenLayout.from_masks(
        is_visual, attention_mask=attention_mask, prompt_mask=prompt_mask, position_ids=position_ids
    )
    allowed = policy_mask(get_policy(policy), layout)
    acc = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    if merge is None:
        return eager_attention(qf, kf, vf, allowed, scale=scale)[0].to(q.dtype)
    return _merged_attention(qf, kf, vf, layout, allowed, merge, scale).to(q.dtype)


def _merged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, allowed: torch.Tensor, merge: Merge,
    scale: float | None,
) -> torch.Tensor:
    """DESIGN §4 one query row at a time, through :func:`futuremask.merge.merged_logits` (slow, literal).

    Each row gets its own sinks (the first valid tokens of its packed sequence) and its own segment
    end; the row-chunked kernel (:func:`futuremask.kernels.merge_attention`) is tested against this.
    """
    base = policy_mask("causal", layout)
    future = allowed & ~base
    sinks, ends = layout.sequence_sinks(merge.prefix), layout.segment_end
    k, v = expand_heads(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, L, L]
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for i in range(q.shape[2]):
            row = slice(i, i + 1)
            logits = merged_logits(scores[b, :, row], base[b, row], future[b, row], torch.tensor([i]), sinks[b, i],
                                   merge, int(ends[b, i]))
            weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # [H, 1, L]
            out[b, :, i] = torch.matmul(weights, v[b])[:, 0]
    return out
