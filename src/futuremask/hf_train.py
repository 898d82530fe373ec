"""Training-time guards of :func:`futuremask.apply` (DESIGN §5-§6): what a training forward needs,
wrappers such as PEFT's ``PeftModel``, and gradient checkpointing.

* A training forward (``model.training`` and gradients enabled) under a non-causal policy needs
  ``labels`` or ``prompt_mask`` to tell the answer from the prompt; without either it is refused.
  When a training batch leaves the policy nothing to open (loss on every token), it warns once.
* So does a forward run by a transformers ``Trainer``'s evaluation or prediction loop (``evaluate``,
  ``predict``), where the model is in eval mode but the batch holds answers (TRL recomputes the
  logits for ``compute_metrics`` without the labels).
* Packed rows (``position_ids`` restarting, no ``attention_mask``) are only kept apart by transformers
  when the call has no cache; with one (``use_cache`` left at the config's default) later samples see
  earlier ones. Refused under a policy, warned once under ``causal`` (:func:`check_packed_cache`).
* A trainer with a separate reference model (``trainer.ref_model``: DPO, KTO, GRPO, ...) must run it
  under the same policy, merge and layers as ``trainer.model``; a forward of either while they differ
  is refused (:class:`ReferencePolicyError`).
* A wrapper (anything with ``get_base_model()``) is hooked as well as the model it holds, so
  ``forward`` and ``generate`` on either follow the policy; ``merge_and_unload()`` / ``unload()``
  on the wrapper are refused while the handle is active.
* Gradient checkpointing recomputes a layer's forward during ``backward()``, possibly after the
  ``with`` block ended. Each checkpointed layer's function is pinned to the call's state (its
  layout and merge plan, and the attention implementation), so the recomputation runs the same
  kernels on the same masks.
"""

from __future__ import annotations

import contextvars
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .layout import _text_positions, packed_sequences
from .policies import dense_mask, overlay_mod

WRAPPER_METHODS = ("merge_and_unload", "unload")


class MissingPromptError(ValueError):
    """A training forward under a non-causal policy with no way to tell the answer from the prompt."""


class ReferencePolicyError(RuntimeError):
    """A trainer's reference model and its trained model run under different policies."""


EVALUATION_METHODS = frozenset({"evaluate", "predict", "evaluation_loop", "prediction_step"})
"""``Trainer`` methods whose model calls are an evaluation or prediction loop."""


def running_trainer() -> tuple[Any | None, bool]:
    """The transformers ``Trainer`` whose method (up the call stack) made the current model call, and
    whether that call is a forward of its evaluation or prediction loop (a ``generate()`` there is not:
    its prompt is what the caller chose); ``(None, False)`` outside any trainer (and at no cost when
    ``transformers.trainer`` was never imported)."""
    module = sys.modules.get("transformers.trainer")
    if module is None:
        return None, False
    trainer_class, trainer, generating = module.Trainer, None, False
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        generating |= code.co_name == "generate"
        if code.co_argcount and code.co_varnames[0] == "self":
            owner = frame.f_locals.get("self")
            if isinstance(owner, trainer_class):
                trainer = owner
                if code.co_name in EVALUATION_METHODS:
                    return trainer, not generating
        frame = frame.f_back
    return trainer, False


def check_training_call(handle: Any, module: torch.nn.Module, inputs: dict[str, Any], layout_fn) -> None:
    """Refuse a training forward, or a forward of a ``Trainer``'s evaluation loop, with neither ``labels``
    nor ``prompt_mask``, and a trainer whose reference model runs another policy; warn once when a
    training batch opens nothing.

    Args:
        handle: the :class:`~futuremask.hf.FutureMask`; module: the called model; inputs: the call's
            layout inputs; layout_fn: returns the call's :class:`~futuremask.layout.TokenLayout`.
    """
    if handle.is_plain_causal:
        return
    trainer, evaluating = running_trainer()
    if trainer is not None:
        check_reference_model(handle, trainer)
    unlabelled = inputs.get("labels") is None and inputs.get("prompt_mask") is None
    if evaluating and unlabelled and not handle.policy.is_causal:
        raise MissingPromptError(
            f"futuremask: {type(trainer).__name__}'s evaluation / prediction loop called the model under policy "
            f"{handle.policy.name!r} with neither `labels` nor `prompt_mask` (TRL does so to rebuild the logits "
            "for compute_metrics), so the answers in the batch would count as prompt and visual rows would see "
            "them. Add prompt_mask to the batches: trainer.data_collator = "
            "futuremask.train.PromptMaskCollator(trainer.data_collator)"
        )
    if handle.policy.is_causal or not (module.training and torch.is_grad_enabled()):
        return
    if unlabelled:
        raise MissingPromptError(
            f"futuremask: a training forward under policy {handle.policy.name!r} got neither `labels` nor "
            "`prompt_mask`, so the answer cannot be told from the prompt and visual rows would see it. Pass "
            "prompt_mask= (bool [B, L], True on the prompt) to the model call (futuremask.train.SFTCollator "
            "emits it), or labels (-100 on the prompt), or run under torch.no_grad() / model.eval()"
        )
    if handle._warned_empty:
        return
    layout = layout_fn()
    overlay = overlay_mod(handle.policy, layout)
    if layout.visual.any() and not dense_mask(overlay, layout.batch_size, layout.length, layout.length,
                                              layout.valid.device).any():
        handle._warned_empty = True
        warnings.warn(
            f"futuremask: in this training batch no token can see anything more under {handle.policy.name!r} "
            "than under causal (the prompt region holds no visual token with a future: is the loss on every "
            "token?). Supervise only the answer (labels -100 on the prompt, e.g. TRL completion_only_loss=True "
            "or assistant_only_loss=True) or pass prompt_mask=",
            UserWarning,
            stacklevel=3,
        )


class PackedCacheError(ValueError):
    """Packed rows in a call that uses a KV cache, where transformers does not keep the samples apart."""


def uses_cache(module: torch.nn.Module, kwargs: dict[str, Any], config: Any) -> bool:
    """Whether a forward of ``module`` with ``kwargs`` runs with a KV cache, as transformers decides it: a
    cache passed in, or ``use_cache`` (the call's, else ``config.use_cache``) and no gradient checkpointing
    in a training forward."""
    if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
        return True
    use_cache = kwargs.get("use_cache")
    use_cache = getattr(config, "use_cache", False) if use_cache is None else use_cache
    flag = "is_activation_checkpointing" if hasattr(type(module), "is_activation_checkpointing") else "is_gradient_checkpointing"
    checkpointing = getattr(module, flag, False) and module.training and torch.is_grad_enabled()
    return bool(use_cache) and not checkpointing


def check_packed_cache(handle: Any, module: torch.nn.Module, kwargs: dict[str, Any], inputs: dict[str, Any],
                       config: Any) -> None:
    """Refuse (non-causal policy) or warn once (``causal``) when packed rows meet a KV cache.

    Args:
        handle: the :class:`~futuremask.hf.FutureMask`; module: the called model; kwargs: the call's
            arguments; inputs: its layout inputs (``position_ids`` only without an ``attention_mask``);
            config: the text config (``use_cache``).
    """
    position_ids, input_ids = inputs.get("position_ids"), inputs.get("input_ids")
    if kwargs.get("attention_mask") is not None or position_ids is None or input_ids is None:
        return
    if not uses_cache(module, kwargs, config):
        return
    if not bool((packed_sequences(_text_positions(position_ids, *input_ids.shape)) > 0).any()):
        return
    message = ("futuremask: packed rows (position_ids restarting, no attention_mask) in a call with a KV cache: "
               "transformers keeps packed samples apart only without a cache, so later samples would see earlier "
               "ones. Pass use_cache=False to the model call (TRL does)")
    if not handle.policy.is_causal:
        raise PackedCacheError(message)
    if not handle._warned_packed:
        handle._warned_packed = True
        warnings.warn(message + " (stock transformers mixes them the same way)", UserWarning, stacklevel=4)


def policy_settings(model: Any) -> tuple | None:
    """``(policy name, merge, layers)`` of the handle on ``model`` (also through a DDP ``.module`` or a
    wrapper such as PEFT's), or None when it runs the stock mask (no handle, or plain ``causal``)."""
    handle = getattr(model, "_futuremask", None) or getattr(getattr(model, "module", None), "_futuremask", None)
    if handle is None or handle.is_plain_causal:
        return None
    return handle.policy.name, handle.merge, handle.layers


def _describe(settings: tuple | None) -> str:
    if settings is None:
        return "the stock causal mask"
    name, merge, layers = settings
    extra = "" if merge is None else f", merge={merge}"
    extra += "" if layers is None else f", layers={sorted(layers)}"
    return f"policy {name!r}{extra}"


def check_reference_model(handle: Any, trainer: Any) -> None:
    """Raise :class:`ReferencePolicyError` when ``handle``'s model is ``trainer.model`` or ``trainer.ref_model``
    and the two run different policy settings (the reference log-probs would come from another model)."""
    ref = getattr(trainer, "ref_model", None)
    policy = getattr(trainer, "model", None)
    if ref is None or policy is None:
        return
    mine = {id(handle.model), id(handle.wrapper)}
    if not mine & {id(m) for m in (ref, policy, getattr(ref, "module", None), getattr(policy, "module", None))}:
        return
    trained, reference = policy_settings(policy), policy_settings(ref)
    if trained != reference:
        raise ReferencePolicyError(
            f"futuremask: {type(trainer).__name__}.model runs {_describe(trained)} but its ref_model runs "
            f"{_describe(reference)}, so the reference log-probs (and every reward and loss built on them) "
            "would come from a differently masked model. Apply the same settings to both: "
            "`with futuremask.train.apply_to_trainer(trainer, policy, ...): trainer.train()`"
        )


# --- wrappers ----------------------------------------------------------------------------------------


def unwrap(model: Any) -> tuple[Any, Any | None]:
    """``(model that holds the config and attention layers, wrapper or None)`` for ``model``."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
        if base is not model:
            return base, model
    return model, None


def guard_wrapper(wrapper: Any) -> None:
    """Make the wrapper's unloading methods raise while futuremask is applied."""
    for name in WRAPPER_METHODS:
        if callable(getattr(wrapper, name, None)):
            object.__setattr__(wrapper, name, _refuse(name))


def unguard_wrapper(wrapper: Any) -> None:
    for name in WRAPPER_METHODS:
        wrapper.__dict__.pop(name, None)


def _refuse(name: str) -> Callable[..., Any]:
    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{name}() while futuremask is applied would hand back a model whose hooks belong to this handle; "
            f"call handle.remove() first, then {name}(), then futuremask.apply() on the returned model"
        )

    return refuse


# --- gradient checkpointing --------------------------------------------------------------------------


class Pinned:
    """A layer's ``_gradient_checkpointing_func`` that runs the checkpointed function in the call's state.

    Args:
        original: the layer's checkpoint function (``torch.utils.checkpoint.checkpoint`` with its options).
        var: the context variable that holds the call; config: the text config; impl: our attention
            implementation name, set for the duration of the (re)computation.
    """

    def __init__(self, original: Callable[..., Any], var: contextvars.ContextVar, config: Any, impl: str) -> None:
        self.original, self.var, self.config, self.impl = original, var, config, impl

    def __call__(self, function: Callable[..., Any], *args, **kwargs):
        return self.original(self._pin(function, self.var.get()), *args, **kwargs)

    def _pin(self, function: Callable[..., Any], call: Any) -> Callable[..., Any]:
        def run(*args, **kwargs):
            token = self.var.set(call)
            previous = self.config._attn_implementation
            if previous != self.impl:  # a recomputation after remove(): run the kernels of the forward
                self.config._attn_implementation = self.impl
            try:
                return function(*args, **kwargs)
            finally:
                if previous != self.impl:
                    self.config._attn_implementation = previous
                self.var.reset(token)

        return run


def pin_checkpointing(model: torch.nn.Module, var: contextvars.ContextVar, config: Any, impl: str) -> list:
    """Pin every checkpointing layer of ``model`` not yet pinned; returns ``[(layer, original)]`` pinned now."""
    pinned = []
    for layer in model.modules():
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if getattr(layer, "gradient_checkpointing", False) and func is not None and not isinstance(func, Pinned):
            layer._gradient_checkpointing_func = Pinned(func, var, config, impl)
            pinned.append((layer, func))
    return pinned


def unpin_checkpointing(pinned: list) -> None:
    """Undo :func:`pin_checkpointing` (latest first: a layer pinned again after a new enable gets the function of that enable back)."""
    for layer, original in reversed(pinned):
        if isinstance(getattr(layer, "_gradient_checkpointing_func", None), Pinned):
            layer._gradient_checkpointing_func = original
