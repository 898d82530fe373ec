"""Hugging Face transformers (5.x) integration: ``apply()`` and ``continuation_logprob()``.

How it plugs in (DESIGN §6):

* Our attention functions and mask builders are registered with transformers under the names
  ``futuremask_sdpa``, ``futuremask_eager``, ``futuremask_flex`` and ``futuremask_merge``; ``apply``
  switches only the text backbone to one of them.
* A forward pre-hook on the model reads the call's layout (visual tokens, padding, prompt region)
  and holds it in a context variable for the duration of the call, so it follows whatever
  ``generate`` does with the batch (beams, ``num_return_sequences``).
* The mask builder runs once per forward (per mask type). For the prompt pass (query offset 0,
  more than one query) it ORs the policy's overlay into the model's own mask; decoding steps get
  the model's own causal mask and the KV cache. A prompt split over several passes is refused.

Per-family notes: LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3 and InternVL expand image
placeholders in ``input_ids``, so the layout comes from the config's ``image_token_id``. Gemma3 keeps
its own image-bidirectional mask: the policy's overlay is ORed on top of it, so ``causal`` is the
stock Gemma3 model.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flex_attention_mask, sdpa_mask

from .hf_train import (
    MissingPromptError,
    check_training_call,
    guard_wrapper,
    pin_checkpointing,
    unguard_wrapper,
    unpin_checkpointing,
    unwrap,
)
from .kernels import eager_attention, flex_attention, merge_attention, sdpa_attention
from .kernels.rows import FutureRows
from .layers import LayerSpec, describe_layers, resolve_layers
from .layout import PER_TOKEN_KEYS, TokenLayout, text_config, visual_token_ids
from .merge import Merge
from .names import BACKENDS
from .policies import Policy, get_policy, overlay_mod

IMPL_PREFIX = "futuremask_"


class PromptSplitError(RuntimeError):
    """A prompt reached the model in several passes, where the policy cannot be applied exactly."""


@dataclass
class _Prefill:
    """What the mask builder prepared for the attention functions of one prompt pass."""

    sinks: torch.Tensor | None  # long [B, L, p]: each query's sink positions (merge only)
    segment_end: torch.Tensor  # long [B, L]: one past the end of each query's segment
    futures: dict[int, FutureRows] = field(default_factory=dict)  # id(base mask) -> the policy's rows


@dataclass
class _Call:
    """The state of one model call under a handle.

    The layout is read from the call's inputs only when a prompt pass asks for it, so decoding
    steps cost nothing.
    """

    handle: FutureMask
    inputs: dict[str, Any]
    prefill: _Prefill | None = None
    scheduled: bool = False  # a prompt mask of this call carries a layer schedule (_keep_causal)
    _layout: TokenLayout | None = None

    @property
    def layout(self) -> TokenLayout:
        if self._layout is None:
            self._layout = TokenLayout.from_inputs(self.handle.model.config, **self.inputs)
        return self._layout


_ACTIVE: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("futuremask_call", default=None)


# --- mask builders ---------------------------------------------------------------------------------


def _make_mask_builder(backend: str):
    base_builder = flex_attention_mask if backend == "flex" else sdpa_mask

    def build(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
        call = _ACTIVE.get()
        args = dict(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                    kv_offset=kv_offset, attention_mask=attention_mask)
        if call is None or call.handle.is_plain_causal:
            return base_builder(**args, **kwargs)
        if int(q_offset) != 0 or int(kv_offset) != 0:
            if q_length > 1:
                raise PromptSplitError(
                    f"futuremask policy {call.handle.policy.name!r} needs the whole prompt in one pass, but "
                    f"{q_length} tokens arrived after {int(q_offset)} cached ones (chunked prefill, or "
                    "generate() on a pre-filled cache). Run the full prompt in one call with an empty cache."
                )
            return base_builder(**args, **kwargs)  # a decoding step: the model's own causal mask
        if q_length == 1:
            return base_builder(**args, **kwargs)
        layout = call.layout
        if layout.length != q_length or layout.batch_size != batch_size:
            raise RuntimeError(
                f"futuremask saw a prompt pass of shape [{batch_size}, {q_length}] that does not match the "
                "input_ids of the model call; call the model with input_ids of the whole prompt"
            )
        # future keys only (kv > q, overlay_mod): on a sliding-window or chunked layer (Gemma3, Qwen2 with
        # use_sliding_window) the past stays limited to the window, as the model was trained, and the
        # model's own mask keeps packed sequences apart for j <= i
        overlay = overlay_mod(call.handle.policy, layout)
        if overlay is None:  # `causal` with a merge: there is no future to fold, the stock mask is exact
            return base_builder(**args, **kwargs)
        if backend == "flex":
            causal = base_builder(**args, **kwargs) if call.handle.layers is not None else None
            kwargs["mask_function"] = _or_guarded(kwargs["mask_function"], overlay, layout.length)
            return _keep_causal(call, base_builder(**args, **kwargs), causal)
        # the model's own mask (None when exactly causal: SDPA's is_causal path) stands for the prompt
        # pass's mask; the attention functions find the policy's rows under it, evaluated a block at a time
        base = base_builder(**args, **kwargs)
        if call.prefill is None:
            merge = call.handle.merge
            sinks = None if merge is None else layout.sequence_sinks(merge.prefix)
            call.prefill = _Prefill(sinks=sinks, segment_end=layout.segment_end)
        call.prefill.futures[id(base)] = FutureRows(
            overlay, base, q_length, batch_size, on=layout.valid.device, kv=int(kv_length)
        )
        return base

    return build


_SCHEDULE_ATTR = "_futuremask_schedule"


def _keep_causal(call: _Call, mask, causal):
    """With a layer schedule, attach ``(layers, the model's own mask)`` to the policy's mask.

    The pair travels with the mask object itself, so a layer recomputed by gradient checkpointing,
    outside the forward call, still picks the right one.
    """
    if call.handle.layers is not None:
        setattr(mask, _SCHEDULE_ATTR, (call.handle.layers, causal))
        call.scheduled = True
    return mask


def _layer_mask(module, attention_mask):
    """The mask for this layer: the policy's on scheduled layers, the model's own causal mask elsewhere."""
    schedule = getattr(attention_mask, _SCHEDULE_ATTR, None)
    if schedule is None:
        call = _ACTIVE.get()
        if call is not None and call.scheduled and getattr(attention_mask, "shape", (0, 0))[-2] > 1:
            raise RuntimeError(
                f"futuremask: layer {getattr(module, 'layer_idx', '?')} received a prompt mask that futuremask did "
                "not build (the model changed it on the way), so the per-layer schedule cannot be applied to it"
            )
        return attention_mask
    layers, causal = schedule
    return attention_mask if _layer_index(module) in layers else causal


def _layer_index(module) -> int:
    index = getattr(module, "layer_idx", None)
    if index is None:
        raise RuntimeError(
            f"a per-layer schedule needs the attention modules' layer_idx, which {type(module).__name__} "
            "does not have; apply the policy to every layer (layers=None)"
        )
    return int(index)


def _or_guarded(mask_function, overlay, length: int):
    """``mask_function OR overlay``, the overlay evaluated only for keys inside the prompt."""

    def mod(b, h, q, kv):
        inside = kv < length
        return mask_function(b, h, q, kv) | (overlay(b, h, q, kv.clamp(max=length - 1)) & inside)

    return mod


# --- attention functions (transformers' signature) --------------------------------------------------


def prompt_rows(attention_mask) -> FutureRows | None:
    """The policy's rows of the prompt pass whose model mask is ``attention_mask`` (None otherwise)."""
    call = _ACTIVE.get()
    prefill = call.prefill if call is not None else None
    return prefill.futures.get(id(attention_mask)) if prefill is not None else None


def _policy_rows(module, attention_mask, query) -> FutureRows | None:
    """The policy's rows for this layer of a prompt pass; None on a decoding step or a layer a schedule leaves causal.

    A prompt pass whose layer receives a mask the builder did not make (the model changed it on the way)
    is refused rather than silently run causal.
    """
    rows = prompt_rows(attention_mask)
    call = _ACTIVE.get()
    if call is None or call.prefill is None or not call.handle.on_layer(module):
        return None
    if rows is None and query.shape[2] > 1:
        raise RuntimeError(
            f"futuremask: layer {getattr(module, 'layer_idx', '?')} of a prompt pass received an attention mask "
            "that futuremask did not build (the model changed it on the way), so the policy cannot be applied to it"
        )
    return rows


def _sdpa_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    mask = _policy_rows(module, attention_mask, query) or attention_mask
    out = sdpa_attention(query, key, value, mask, scale=scaling, dropout=dropout)
    return out.transpose(1, 2).contiguous(), None


def _eager_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    rows = _policy_rows(module, attention_mask, query)
    mask = attention_mask if rows is None else rows.dense()
    out, weights = eager_attention(
        query, key, value, mask, scale=scaling, dropout=dropout, training=module.training
    )
    return out.transpose(1, 2).contiguous(), weights


def _flex_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    if dropout:
        raise ValueError("futuremask's flex backend does not support attention dropout; use backend='sdpa'")
    out = flex_attention(query, key, value, _layer_mask(module, attention_mask), scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _merge_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    future = _policy_rows(module, attention_mask, query)
    if future is None:  # a decoding step, or a layer the schedule leaves causal
        return _sdpa_fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    prefill = _ACTIVE.get().prefill
    length = query.shape[2]
    base = None if attention_mask is None else attention_mask[..., :length]
    out = merge_attention(
        query, key[:, :, :length], value[:, :, :length], base, future,
        merge=_ACTIVE.get().handle.merge, prefix_positions=prefill.sinks, scale=scaling,
        prompt_end=prefill.segment_end,
    )
    return out.transpose(1, 2).contiguous(), None


_FUNCTIONS = {"sdpa": _sdpa_fn, "eager": _eager_fn, "flex": _flex_fn, "merge": _merge_fn}
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    for name, fn in _FUNCTIONS.items():
        AttentionInterface.register(IMPL_PREFIX + name, fn)
        AttentionMaskInterface.register(IMPL_PREFIX + name, _make_mask_builder(name))
    _registered = True


def _layout_inputs(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a model call that define its token layout (input_ids may come positionally)."""
    mask = kwargs.get("attention_mask")
    return {
        "input_ids": kwargs.get("input_ids", args[0] if args else None),
        "attention_mask": mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None,
        "mm_token_type_ids": kwargs.get("mm_token_type_ids"),
        "labels": kwargs.get("labels"),
        "prompt_mask": kwargs.get("prompt_mask"),
        "position_ids": kwargs.get("position_ids") if mask is None else None,
    }


# --- the handle ------------------------------------------------------------------------------------


def _resolve_backend(model, backend: str, merge: Merge | None) -> str:
    if backend.startswith("flash"):
        raise ValueError(
            f"backend {backend!r}: FlashAttention cannot express future-aware masks (it only knows causal and "
            "sliding windows). Use backend='sdpa', 'eager' or 'flex'."
        )
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if merge is not None:
        if backend not in ("auto", "sdpa"):
            raise ValueError(
                f"merge={merge.kind!r} runs on futuremask's merge kernel (SDPA for causal rows); "
                f"use backend='auto' or 'sdpa', not {backend!r}"
            )
        return "merge"
    if backend == "auto":
        device = next(model.parameters()).device
        return "flex" if device.type == "cuda" else "sdpa"
    return backend


class FutureMask:
    """A policy applied to a model; :func:`apply` returns it. Also a context manager.

    Attributes:
        policy: the applied :class:`~futuremask.policies.Policy`.
        merge: the :class:`Merge` settings, or None.
        backend: the kernel in use (``sdpa``, ``eager``, ``flex`` or ``merge``).
        layers: the text layers the policy applies to (a frozenset of indices), or None for all of them.
    """

    def __init__(
        self, model, policy: str | Policy, merge: Merge | str | None = None, backend: str = "auto",
        layers: LayerSpec = None,
    ):
        if getattr(model, "_futuremask", None) is not None:
            raise RuntimeError("futuremask is already applied to this model; call .remove() on that handle first")
        model, self.wrapper = unwrap(model)
        self.model = model
        self.policy = get_policy(policy)
        self.merge = Merge.coerce(merge)
        self._requested_backend = backend
        self.backend = _resolve_backend(model, backend, self.merge)
        self.layers = resolve_layers(layers, int(text_config(model.config).num_hidden_layers))
        if not self.policy.is_causal:
            visual_token_ids(model.config)  # fail now, with a clear message, if visual tokens cannot be found
        _register()
        self._previous = text_config(model.config)._attn_implementation
        self._set_impl(IMPL_PREFIX + self.backend)
        self._hooks = []
        for target in (model, self.wrapper):
            if target is not None:
                self._hooks += [
                    target.register_forward_pre_hook(self._before_forward, with_kwargs=True),
                    target.register_forward_hook(self._after_forward, always_call=True),
                ]
        self._tokens: list[contextvars.Token] = []
        self._pending: _Call | None = None
        self._pinned: list = []
        self._warned_empty = False
        self._original_prepare = model.prepare_inputs_for_generation
        model.prepare_inputs_for_generation = self._prepare_inputs_for_generation
        model.__deepcopy__ = self._copy_without_policy  # copy.deepcopy looks it up on the instance
        model._futuremask = self
        if self.wrapper is not None:
            guard_wrapper(self.wrapper)
            self.wrapper.__dict__["_futuremask"] = self

    @property
    def is_plain_causal(self) -> bool:
        """True when nothing differs from the stock causal mask (``causal`` without merge)."""
        return self.policy.is_causal and self.merge is None

    def on_layer(self, module) -> bool:
        """Whether the policy applies to the attention ``module`` (by its ``layer_idx``)."""
        return self.layers is None or _layer_index(module) in self.layers

    def _set_impl(self, name: str) -> None:
        if getattr(self.model.config, "text_config", None) is not None:
            self.model.set_attn_implementation({"text_config": name})
        else:
            self.model.set_attn_implementation(name)

    def _before_forward(self, module, args, kwargs):
        active = _ACTIVE.get()
        if active is not None and active.handle is self:  # the wrapper's call reaching the model it holds
            kwargs.pop("prompt_mask", None)
            self._tokens.append(_ACTIVE.set(active))
            return args, kwargs
        attention_mask = kwargs.get("attention_mask")
        prepared, self._pending = self._pending, None
        if attention_mask is not None and not (isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2):
            if prepared is None and not self.is_plain_causal:
                raise ValueError(
                    "futuremask builds the 4-D attention mask itself; pass the 2-D padding mask "
                    "(attention_mask of shape [B, L]) instead of a prepared 4-D mask"
                )
            call = prepared  # generate() with a static cache made the mask before forward
        else:
            call = _Call(handle=self, inputs=_layout_inputs(args, kwargs))
            check_training_call(self, module, call.inputs, lambda: call.layout)
        if module.training and torch.is_grad_enabled():
            self._pinned += pin_checkpointing(self.model, _ACTIVE, text_config(self.model.config), IMPL_PREFIX + self.backend)
        kwargs.pop("prompt_mask", None)
        self._tokens.append(_ACTIVE.set(call))
        return args, kwargs

    def _prepare_inputs_for_generation(self, *args, **kwargs):
        """generate() builds 4-D masks here for static caches: give the mask builder the layout."""
        call = _Call(handle=self, inputs=_layout_inputs(args, kwargs))
        token = _ACTIVE.set(call)
        try:
            model_inputs = self._original_prepare(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)
        mask = model_inputs.get("attention_mask")
        if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            self._pending = call
        return model_inputs

    def _after_forward(self, module, args, output):
        if self._tokens:
            _ACTIVE.reset(self._tokens.pop())
        return output

    def remove(self) -> None:
        """Restore the model exactly as it was before :func:`apply`."""
        if getattr(self.model, "_futuremask", None) is not self:
            return
        for hook in self._hooks:
            hook.remove()
        unpin_checkpointing(self._pinned)
        del self.model.prepare_inputs_for_generation  # back to the class's method
        del self.model.__deepcopy__
        self._set_impl(self._previous)
        del self.model._futuremask
        if self.wrapper is not None:
            unguard_wrapper(self.wrapper)
            self.wrapper.__dict__.pop("_futuremask", None)

    def _copy_without_policy(self, memo: dict) -> Any:
        """``copy.deepcopy(model)`` under this handle: a plain copy, the policy stays on the original only.

        A copy made with the policy attached would keep its hooks and attention implementation, with
        no handle of its own to remove them; so the policy is taken off for the copy and put back.
        """
        self.remove()
        try:
            return copy.deepcopy(self.model, memo)
        finally:
            self.__init__(self.model, self.policy, merge=self.merge, backend=self._requested_backend)

    def __enter__(self) -> FutureMask:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        merge = f", merge={self.merge}" if self.merge else ""
        layers = f", layers={describe_layers(self.layers)!r}" if self.layers is not None else ""
        return f"FutureMask(policy={self.policy.name!r}{merge}{layers}, backend={self.backend!r})"


def apply(
    model, policy: str, merge: Merge | str | None = None, backend: str = "auto", layers: LayerSpec = None
) -> FutureMask:
    """Run ``model``'s prompt pass under ``policy``; decoding stays causal with the KV cache.

    Args:
        model: a transformers model (a VLM, or its text backbone), or a wrapper holding one (a PEFT
            ``PeftModel``, anything with ``get_base_model()``): ``forward`` and ``generate`` on the
            wrapper then follow the policy too; its ``merge_and_unload()`` is refused until ``remove()``.
        policy: a name from :data:`futuremask.POLICIES`.
        merge: a :class:`Merge` (or kind name) to fold the future into the sink instead of attending it.
        backend: ``"auto"`` (flex on CUDA, sdpa otherwise), ``"sdpa"``, ``"eager"`` or ``"flex"``.
        layers: the text decoder layers the policy applies to, causal on the others: a ``range``, a list
            of indices, a string such as ``"0-15"``, or a callable of the layer index; ``None``/``"all"``
            (the default) for every layer. The layout and the masks are still built once per forward.

    Returns:
        A :class:`FutureMask` handle; ``handle.remove()`` (or leaving its ``with`` block) restores the model.
        A forward call may pass ``prompt_mask=`` (bool ``[B, L]``, True on the prompt) to set the
        supervised positions explicitly; with ``labels`` they are the labelled ones. Each supervised
        token and each packed sequence starts a new segment (DESIGN §2). A training forward (training
        mode, gradients on) under a non-causal policy with neither raises :class:`MissingPromptError`.
    """
    return FutureMask(model, policy, merge=merge, backend=backend, layers=layers)


# --- continuation scoring -------------------------------------------------------------------------

def _pad_continuations(
    continuation_ids: torch.Tensor | Sequence[Sequence[int]], batch_size: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(continuation_ids, torch.Tensor):
        ids = continuation_ids.to(device)
        if ids.dim() == 1 or ids.shape[0] == 1:
            ids = ids.reshape(1, -1).expand(batch_size, -1)
        if ids.shape[0] != batch_size:
            raise ValueError(f"continuation_ids has {ids.shape[0]} rows for a batch of {batch_size} prompts")
        return ids, torch.ones_like(ids, dtype=torch.bool)
    rows = [torch.as_tensor(list(c), dtype=torch.long) for c in continuation_ids]
    if len(rows) != batch_size:
        raise ValueError(f"{len(rows)} continuations for a batch of {batch_size} prompts")
    width = max(len(r) for r in rows)
    ids = torch.zeros(batch_size, width, dtype=torch.long)
    keep = torch.zeros(batch_size, width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        keep[i, : len(r)] = True
    return ids.to(device), keep.to(device)


def left_aligned(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` with every row's padding moved to the left, so each prompt ends at the last column.

    A right-padded row ``[p0 p1 PAD]`` becomes ``[PAD p0 p1]``: ``input_ids``, ``attention_mask`` and the
    per-token keys are rolled by the row's number of trailing pads. Left-padded inputs come back as given.
    """
    mask = inputs.get("attention_mask")
    if mask is None or bool(mask[:, -1].all()):
        return dict(inputs)
    valid = mask.bool()
    trailing = (~valid).flip(1).long().cumprod(dim=1).sum(dim=1)  # [B] pads after the last valid token
    length = mask.shape[1]
    index = (torch.arange(length, device=mask.device)[None, :] - trailing[:, None]) % length  # [B, L]
    out = dict(inputs)
    for key in ("input_ids", "attention_mask", *PER_TOKEN_KEYS):
        if out.get(key) is not None:
            out[key] = out[key].gather(1, index)
    return out


def with_continuation(inputs: Mapping[str, Any], cont: torch.Tensor, keep: torch.Tensor) -> dict[str, Any]:
    """Model inputs for prompt + continuation in one pass, the continuation outside the prompt region.

    Args:
        inputs: the processor's output for the prompts (``input_ids [B, Lp]``, ``attention_mask``, ...).
        cont: long ``[B, Lc]`` continuation ids; keep: bool ``[B, Lc]``, False on right padding.

    Returns:
        ``inputs`` with ``input_ids``, ``attention_mask`` and the per-token keys extended by ``Lc``, and a
        ``prompt_mask`` (bool ``[B, Lp + Lc]``) that is True on the valid prompt positions only.
    """
    input_ids = inputs["input_ids"]
    prompt_valid = inputs.get("attention_mask")
    prompt_valid = torch.ones_like(input_ids) if prompt_valid is None else prompt_valid
    call = dict(inputs)
    call["input_ids"] = torch.cat([input_ids, cont], dim=1)
    call["attention_mask"] = torch.cat([prompt_valid.to(keep.dtype), keep], dim=1).long()
    for key in PER_TOKEN_KEYS:
        if call.get(key) is not None:
            call[key] = torch.nn.functional.pad(call[key], (0, cont.shape[1]), value=0)
    call["prompt_mask"] = torch.cat([prompt_valid.bool(), torch.zeros_like(keep)], dim=1)
    return call


def continuation_logprob(
    model,
    inputs: Mapping[str, Any],
    continuation_ids: torch.Tensor | Sequence[Sequence[int]],
    policy: str = "causal",
    merge: Merge | str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Sum of log-probabilities of ``continuation_ids`` after the prompt in ``inputs``, in one forward pass.

    The continuation is appended right after each prompt (right-padded prompts are first
    left-aligned, :func:`left_aligned`) and excluded from the prompt region, so visual rows never see it.

    Args:
        model: a transformers VLM.
        inputs: the processor's output for the prompts (``input_ids [B, Lp]``, ``attention_mask``, pixels, ...).
        continuation_ids: long ``[B, Lc]`` or ``[Lc]``, or a list of token lists of any lengths.
        policy, merge, backend: as for :func:`apply`.

    Returns:
        float32 ``[B]``.
    """
    if getattr(model, "_futuremask", None) is not None:
        raise RuntimeError(
            "continuation_logprob applies the policy itself; call it outside `with futuremask.apply(...)` "
            "(or remove() the handle first) and pass policy=/merge= here"
        )
    input_ids = inputs["input_ids"]
    batch_size, prompt_len = input_ids.shape
    device = input_ids.device
    cont, keep = _pad_continuations(continuation_ids, batch_size, device)
    if cont.shape[1] == 0:
        raise ValueError("continuation_ids is empty: there is nothing to score")
    call = with_continuation(left_aligned(inputs), cont, keep)
    with apply(model, policy, merge=merge, backend=backend), torch.no_grad():
        logits = model(**call, use_cache=False).logits
    logp = torch.log_softmax(logits[:, prompt_len - 1 : -1].float(), dim=-1)
    token_logp = logp.gather(-1, cont[..., None]).squeeze(-1)
    return (token_logp * keep).sum(dim=1)


Handle = FutureMask
"""What :func:`apply` returns is a handle on the model (``remove()``, a context manager), not a mask."""

__all__ = ["BACKENDS", "FutureMask", "Handle", "MissingPromptError", "PromptSplitError", "apply", "continuation_logprob"]
