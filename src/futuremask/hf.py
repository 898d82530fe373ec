"""Hugging Face transformers (5.x) integration: ``apply()`` and ``continuation_logprob()``.

How it plugs in (DESIGN §6):

* Our attention functions and mask builders are registered with transformers under the names
  ``futuremask_sdpa``, ``futuremask_eager``, ``futuremask_flex`` and ``futuremask_merge``; ``apply``
  switches only the text backbone to one of them.
* A forward pre-hook on the model reads the call's layout (visual tokens, padding, prompt region)
  and holds it in a context variable for the duration of the call, so it follows whatever
  ``generate`` does with the batch (beams, ``num_return_sequences``).
* The mask builder runs once per forward (per mask type), :mod:`futuremask.hf_masks`: for the prompt
  pass (query offset 0, more than one query) it adds the policy's overlay to the model's own mask and
  records both in the call's ``PromptPass``, where each attention function looks up what its layer
  runs; decoding steps get the model's own causal mask and the KV cache. A prompt split over several
  passes is refused.

Per-family notes: LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3 and InternVL expand image
placeholders in ``input_ids``, so the layout comes from the config's ``image_token_id``. Gemma3 keeps
its own image-bidirectional mask: the policy's overlay is ORed on top of it, so ``causal`` is the
stock Gemma3 model.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .hf_families import check_supported, continuation_token_types, missing_prompt_input
from .hf_masks import ACTIVE, Call, PromptSplitError, layer_mask, mask_builder
from .hf_train import (
    WRAPPER_METHODS,
    MissingPromptError,
    PackedCacheError,
    check_packed_cache,
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
from .layout import PER_TOKEN_KEYS, text_config, visual_token_ids
from .merge import Merge
from .names import BACKENDS
from .policies import Policy, get_policy

IMPL_PREFIX = "futuremask_"


# --- attention functions (transformers' signature) --------------------------------------------------


def _no_softcap(kwargs: dict) -> None:
    if kwargs.get("softcap") is not None:  # apply() picks eager for these models; never drop the cap silently
        raise ValueError("attention logit softcapping is computed only by futuremask's eager backend; use backend='eager'")


def _sdpa_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    _no_softcap(kwargs)
    mask = layer_mask(module, attention_mask)  # FutureRows on a prompt pass's policy layer
    out = sdpa_attention(query, key, value, mask, scale=scaling, dropout=dropout)
    return out.transpose(1, 2).contiguous(), None


def _eager_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
    mask = layer_mask(module, attention_mask)
    mask = mask.dense() if isinstance(mask, FutureRows) else mask
    out, weights = eager_attention(
        query, key, value, mask, scale=scaling, dropout=dropout, training=module.training, softcap=softcap
    )
    return out.transpose(1, 2).contiguous(), weights


def _flex_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    _no_softcap(kwargs)
    if dropout:
        raise ValueError("futuremask's flex backend does not support attention dropout; use backend='sdpa'")
    out = flex_attention(query, key, value, layer_mask(module, attention_mask), scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _merge_fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    _no_softcap(kwargs)
    future = layer_mask(module, attention_mask)
    if not isinstance(future, FutureRows):  # a decoding step, or a layer the schedule leaves causal
        return _sdpa_fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    call = ACTIVE.get()
    length = query.shape[2]
    base = None if attention_mask is None else attention_mask[..., :length]
    out = merge_attention(
        query, key[:, :, :length], value[:, :, :length], base, future,
        merge=call.handle.merge, prefix_positions=call.prompt.sinks, scale=scaling,
        prompt_end=call.prompt.segment_end,
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
        AttentionMaskInterface.register(IMPL_PREFIX + name, mask_builder(name))
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
    softcap = getattr(text_config(model.config), "attn_logit_softcapping", None)
    if softcap is not None and (merge is not None or backend not in ("auto", "eager")):
        raise ValueError(
            f"{type(model).__name__} caps its attention logits (attn_logit_softcapping={softcap}, Gemma2-style), "
            f"which only futuremask's eager kernel computes; use backend='eager' (or 'auto'), not {backend!r}"
            + (" with a merge" if merge is not None else "")
        )
    if softcap is not None:
        return "eager"
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


_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
"""The ``nn.Module`` dictionaries that hold a hook's entries (keyed by the hook's id)."""
_OWN_ATTRIBUTES = ("prepare_inputs_for_generation", "_futuremask", "__deepcopy__", *WRAPPER_METHODS)
"""Instance attributes a handle sets on the model or its wrapper."""


def _set_attn_impl(model, name: str) -> None:
    """Switch the text backbone of ``model`` to attention implementation ``name``."""
    if getattr(model.config, "text_config", None) is not None:
        model.set_attn_implementation({"text_config": name})
    else:
        model.set_attn_implementation(name)


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
        check_supported(model)
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
        self._pending: Call | None = None
        self._pinned: list = []
        self._warned_empty = False
        self._warned_packed = False
        self._original_prepare = model.prepare_inputs_for_generation
        model.prepare_inputs_for_generation = self._prepare_inputs_for_generation
        model._futuremask = self
        if self.wrapper is not None:
            guard_wrapper(self.wrapper)
            self.wrapper.__dict__["_futuremask"] = self
        for target in self._targets:  # copy.deepcopy looks __deepcopy__ up on the instance
            target.__dict__["__deepcopy__"] = functools.partial(self._copy_without_policy, target)

    @property
    def _targets(self) -> tuple:
        """The modules this handle hooks: the model, and the wrapper holding it (if any)."""
        return (self.model,) if self.wrapper is None else (self.model, self.wrapper)

    @property
    def is_plain_causal(self) -> bool:
        """True when nothing differs from the stock causal mask (``causal`` without merge)."""
        return self.policy.is_causal and self.merge is None

    def _set_impl(self, name: str) -> None:
        _set_attn_impl(self.model, name)

    def _before_forward(self, module, args, kwargs):
        active = ACTIVE.get()
        if active is not None and active.handle is self:  # the wrapper's call reaching the model it holds
            kwargs.pop("prompt_mask", None)
            self._tokens.append(ACTIVE.set(active))
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
            call = Call(handle=self, inputs=_layout_inputs(args, kwargs),
                        missing_input=missing_prompt_input(self.model.config, kwargs))
            check_training_call(self, module, call.inputs, lambda: call.layout)
            check_packed_cache(self, module, kwargs, call.inputs, text_config(self.model.config))
        if module.training and torch.is_grad_enabled():
            self._pinned += pin_checkpointing(self.model, ACTIVE, text_config(self.model.config), IMPL_PREFIX + self.backend)
        kwargs.pop("prompt_mask", None)
        self._tokens.append(ACTIVE.set(call))
        return args, kwargs

    def _prepare_inputs_for_generation(self, *args, **kwargs):
        """generate() builds 4-D masks here for static caches: give the mask builder the layout."""
        call = Call(handle=self, inputs=_layout_inputs(args, kwargs),
                    missing_input=missing_prompt_input(self.model.config, kwargs))
        token = ACTIVE.set(call)
        try:
            model_inputs = self._original_prepare(*args, **kwargs)
        finally:
            ACTIVE.reset(token)
        mask = model_inputs.get("attention_mask")
        if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
            self._pending = call
        return model_inputs

    def _after_forward(self, module, args, output):
        if self._tokens:
            ACTIVE.reset(self._tokens.pop())
        return output

    def remove(self) -> None:
        """Restore the model exactly as it was before :func:`apply`."""
        if getattr(self.model, "_futuremask", None) is not self:
            return
        for hook in self._hooks:
            hook.remove()
        unpin_checkpointing(self._pinned)
        del self.model.prepare_inputs_for_generation  # back to the class's method
        self._set_impl(self._previous)
        del self.model._futuremask
        for target in self._targets:
            target.__dict__.pop("__deepcopy__", None)
        if self.wrapper is not None:
            unguard_wrapper(self.wrapper)
            self.wrapper.__dict__.pop("_futuremask", None)

    def _copy_without_policy(self, target: torch.nn.Module, memo: dict) -> Any:
        """``copy.deepcopy(target)`` (the model or its wrapper) under this handle: a plain, un-applied copy.

        The copy has none of the handle's hooks, attributes or attention implementation (apply a policy
        to it with :func:`apply`); the original keeps this handle exactly as it was (policy, merge,
        layers, hooks in their places).
        """
        with self._detached():
            twin = copy.deepcopy(target, memo)
        copied_model = memo.get(id(self.model))  # the copy of the model, also when a wrapper was copied
        if copied_model is not None:
            _set_attn_impl(copied_model, self._previous)
        return twin

    @contextlib.contextmanager
    def _detached(self) -> Iterator[None]:
        """Inside the block the model and wrapper carry no trace of this handle; afterwards each gets back
        the very hook dictionaries, attributes and checkpoint functions it had."""
        ours = {hook.id for hook in self._hooks}
        saved: list[tuple[Any, str, Any]] = []
        for target in self._targets:
            for name in _HOOK_DICTS:
                hooks = target.__dict__[name]
                saved.append((target, name, hooks))
                target.__dict__[name] = OrderedDict((k, v) for k, v in hooks.items() if k not in ours)
            for name in _OWN_ATTRIBUTES:
                if name in target.__dict__:
                    saved.append((target, name, target.__dict__.pop(name)))
        checkpointing = [(layer, layer._gradient_checkpointing_func) for layer, _ in self._pinned]
        unpin_checkpointing(self._pinned)
        try:
            yield
        finally:
            for target, name, value in saved:
                target.__dict__[name] = value
            for layer, func in checkpointing:
                layer._gradient_checkpointing_func = func

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
        ``copy.deepcopy`` of the model (or of the wrapper) while applied returns a plain, un-applied
        copy (TRL's ``create_reference_model`` makes one); the original keeps this handle unchanged.
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


def with_continuation(
    inputs: Mapping[str, Any], cont: torch.Tensor, keep: torch.Tensor, config: Any = None
) -> dict[str, Any]:
    """Model inputs for prompt + continuation in one pass, the continuation outside the prompt region.

    Args:
        inputs: the processor's output for the prompts (``input_ids [B, Lp]``, ``attention_mask``, ...).
        cont: long ``[B, Lc]`` continuation ids; keep: bool ``[B, Lc]``, False on right padding.
        config: the model's config: the per-token keys take its family's value on the continuation
            (PaliGemma's ``token_type_ids`` 1, its causal suffix; 0 elsewhere).

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
    for key, value in continuation_token_types(config).items():
        if call.get(key) is not None:
            call[key] = torch.nn.functional.pad(call[key], (0, cont.shape[1]), value=value)
    call["prompt_mask"] = torch.cat([prompt_valid.bool(), torch.zeros_like(keep)], dim=1)
    return call


def continuation_logprob(
    model,
    inputs: Mapping[str, Any],
    continuation_ids: torch.Tensor | Sequence[Sequence[int]],
    policy: str = "causal",
    merge: Merge | str | None = None,
    backend: str = "auto",
    layers: LayerSpec = None,
) -> torch.Tensor:
    """Sum of log-probabilities of ``continuation_ids`` after the prompt in ``inputs``, in one forward pass.

    The continuation is appended right after each prompt (right-padded prompts are first
    left-aligned, :func:`left_aligned`) and excluded from the prompt region, so visual rows never see it.

    Args:
        model: a transformers VLM.
        inputs: the processor's output for the prompts (``input_ids [B, Lp]``, ``attention_mask``, pixels, ...).
        continuation_ids: long ``[B, Lc]`` or ``[Lc]``, or a list of token lists of any lengths.
        policy, merge, backend, layers: as for :func:`apply` (``layers``: the policy on these text layers
            only, causal on the others).

    Returns:
        float32 ``[B]``.
    """
    if getattr(model, "_futuremask", None) is not None:
        raise RuntimeError(
            "continuation_logprob applies the policy itself; call it outside `with futuremask.apply(...)` "
            "(or remove() the handle first) and pass policy=/merge=/layers= here"
        )
    input_ids = inputs["input_ids"]
    batch_size, prompt_len = input_ids.shape
    device = input_ids.device
    cont, keep = _pad_continuations(continuation_ids, batch_size, device)
    if cont.shape[1] == 0:
        raise ValueError("continuation_ids is empty: there is nothing to score")
    call = with_continuation(left_aligned(inputs), cont, keep, model.config)
    with apply(model, policy, merge=merge, backend=backend, layers=layers), torch.no_grad():
        logits = model(**call, use_cache=False).logits
    logp = torch.log_softmax(logits[:, prompt_len - 1 : -1].float(), dim=-1)
    token_logp = logp.gather(-1, cont[..., None]).squeeze(-1)
    return (token_logp * keep).sum(dim=1)


Handle = FutureMask
"""What :func:`apply` returns is a handle on the model (``remove()``, a context manager), not a mask."""

__all__ = ["BACKENDS", "FutureMask", "Handle", "MissingPromptError", "PackedCacheError", "PromptSplitError", "apply", "continuation_logprob"]
