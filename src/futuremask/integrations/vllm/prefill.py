"""The whole-prompt passes of one engine step and their attention under a policy (pure torch, no vLLM).

vLLM packs the step's requests into one flat token sequence. For each request whose prompt is
computed in this step from position 0, :func:`plan_step` builds the request's
:class:`~futuremask.layout.TokenLayout`; :func:`attend` recomputes those rows from the fresh keys and
values with the policy's mask. Every other row keeps the stock kernel's causal result: decoding is
causal (DESIGN §3). A prompt that arrives in several passes is refused when the policy would let a
query of it see a later key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...hf import PromptSplitError
from ...kernels import merge_attention, sdpa_attention
from ...kernels.rows import FutureRows
from ...layout import TokenLayout, modality_from_ids
from ...merge import Merge
from ...policies import MaskMod, Policy, and_masks, causal_layout_mod, dense_mask, overlay_mod


def _never(b, h, q, kv):
    return torch.zeros((), dtype=torch.bool, device=q.device)


def window_size(sliding_window: int | tuple[int, int] | None) -> int:
    """A stock implementation's ``sliding_window`` as a window length (``0``: none).

    vLLM's CPU backend keeps the window length (``-1``: none); FlashAttention keeps its
    ``(left, right)`` pair, ``(window - 1, 0)`` for a causal layer (``(-1, -1)``: none).
    """
    if sliding_window is None:
        return 0
    if isinstance(sliding_window, tuple):
        left, right = sliding_window
        if right > 0:
            raise ValueError(f"a decoder layer with a window that reaches {right} keys ahead: {sliding_window}")
        return left + 1 if left >= 0 else 0
    return max(int(sliding_window), 0)


def window_mod(layout: TokenLayout, window: int) -> MaskMod:
    """The model's own mask of a layer: causal, and ``i - j < window`` when ``window > 0``."""
    causal = causal_layout_mod(layout)
    if window <= 0:
        return causal
    return and_masks(causal, lambda b, h, q, kv: q - kv < window)


@dataclass
class PromptRows:
    """Rows ``start:stop`` of the step's flat batch: one request's prompt from position 0.

    ``layout`` is ``[1, stop - start]``, on the device of the step's tensors (its masks are made there).
    After a preemption vLLM recomputes the prompt and the tokens
    generated so far in one pass; those come after ``layout.prompt`` ends, as text, so no query sees
    them as future and their own rows stay causal.
    """

    start: int
    stop: int
    layout: TokenLayout
    _masks: dict = field(default_factory=dict, repr=False)

    def future(self, policy: Policy) -> MaskMod:
        """The policy's extra pairs, all after the query (the layer's own mask covers the past)."""
        return overlay_mod(policy, self.layout) or _never

    def masks(self, policy: Policy, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """bool ``[1, 1, L, L]`` base (the layer's own mask) and future keys, made once per step and window."""
        if window not in self._masks:
            length, device = self.stop - self.start, self.layout.valid.device
            base = dense_mask(window_mod(self.layout, window), 1, length, length, device=device)
            extra = dense_mask(self.future(policy), 1, length, length, device=device)
            self._masks[window] = (base[:, None], extra[:, None])
        return self._masks[window]


def plan_step(
    policy: Policy,
    config,
    token_ids: torch.Tensor,
    prompt_lens: torch.Tensor,
    query_start: torch.Tensor,
    seq_lens: torch.Tensor,
    device: torch.device | str = "cpu",
) -> list[PromptRows]:
    """The whole-prompt passes of a step whose prompt the policy changes.

    Args:
        policy: the engine's policy (not ``causal``).
        config: the model config; visual positions come from its image / video token ids.
        token_ids: long ``[R, >= max seq_len]``, each request's tokens (prompt first) by batch row.
        prompt_lens: long ``[R]``, each request's prompt length.
        query_start: long ``[R + 1]``, where each request's rows start in the flat batch.
        seq_lens: long ``[R]``, each request's length after this step.
        device: where the step's queries are; each pass's layout (and so its masks) is put there.

    Raises:
        PromptSplitError: a request computes part of its prompt in this step (a chunk, a prefix-cache
            hit, a partial recompute) and the policy lets one of its queries see a later key.
    """
    passes = []
    for r in range(prompt_lens.shape[0]):
        start, stop = int(query_start[r]), int(query_start[r + 1])
        computed, prompt_len = int(seq_lens[r]) - (stop - start), int(prompt_lens[r])
        if stop == start or computed >= prompt_len:
            continue  # no rows, or decoding past the prompt: causal with the cache
        length = stop - start
        total = max(prompt_len, computed + length)
        modality = torch.zeros(1, total, dtype=torch.long)
        modality[:, :prompt_len] = modality_from_ids(token_ids[r : r + 1, :prompt_len].long(), config)
        prompt = torch.arange(total)[None] < prompt_len
        layout = TokenLayout(valid=torch.ones_like(prompt), modality=modality, prompt=prompt)
        if not dense_mask(PromptRows(0, total, layout).future(policy), 1, prompt_len, prompt_len).any():
            continue  # no future pair in this prompt (e.g. no image): the stock causal result is exact
        if computed > 0 or length < prompt_len:
            raise PromptSplitError(
                f"futuremask policy {policy.name!r} needs the whole prompt in one pass, but a request computed "
                f"positions {computed}..{computed + length} of its {prompt_len}-token prompt in this step "
                "(chunked prefill, a prefix-cache hit or a partial recompute). Start the engine with "
                "futuremask.integrations.vllm.engine_kwargs(policy)."
            )
        passes.append(PromptRows(start, stop, layout.to(device)))
    return passes


def attend(
    prompt: PromptRows,
    policy: Policy,
    merge: Merge | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    window: int,
) -> torch.Tensor:
    """``[L, H, D]``: attention of one whole-prompt pass under the policy (and merge).

    Args:
        q: ``[L, H, D]`` the pass's queries; k, v: ``[L, Hkv, D]`` its fresh keys and values.
        window: the layer's sliding window (``<= 0``: none); past keys stay inside it.
    """
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))
    base, extra = prompt.masks(policy, window)
    if merge is None:
        out = sdpa_attention(qb, kb, vb, base | extra, scale=scale)
    else:
        length = prompt.stop - prompt.start
        out = merge_attention(
            qb, kb, vb, base, FutureRows(prompt.future(policy), base, length, 1), merge=merge,
            prefix_positions=prompt.layout.sequence_sinks(merge.prefix), scale=scale,
            prompt_end=prompt.layout.segment_end,
        )
    return out[0].transpose(0, 1)
