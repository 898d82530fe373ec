"""Reference attention for one layer under a policy (and optionally a merge): the oracle of the kernels."""

from __future__ import annotations

import torch

from .kernels import eager_attention, merge_attention
from .layout import TokenLayout
from .merge import Merge
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
    base = policy_mask("causal", layout)
    future = allowed & ~base
    out = merge_attention(
        qf, kf, vf, base, future, merge=merge, prefix_positions=layout.sequence_sinks(merge.prefix), scale=scale,
        prompt_end=layout.segment_end,
    )
    return out.to(q.dtype)
