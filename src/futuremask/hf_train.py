"""Training-time guards of :func:`futuremask.apply` (DESIGN §5-§6): what a training forward needs,
wrappers such as PEFT's ``PeftModel``, and gradient checkpointing.

* A training forward (``model.training`` and gradients enabled) under a non-causal policy needs
  ``labels`` or ``prompt_mask`` to tell the answer from the prompt; without either it is refused.
  When a training batch leaves the policy nothing to open (loss on every token), it warns once.
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
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .policies import dense_mask, overlay_mod

WRAPPER_METHODS = ("merge_and_unload", "unload")


class MissingPromptError(ValueError):
    """A training forward under a non-causal policy with no way to tell the answer from the prompt."""


def check_training_call(handle: Any, module: torch.nn.Module, inputs: dict[str, Any], layout_fn) -> None:
    """Refuse a training forward with neither ``labels`` nor ``prompt_mask``; warn once when nothing opens.

    Args:
        handle: the :class:`~futuremask.hf.FutureMask`; module: the called model; inputs: the call's
            layout inputs; layout_fn: returns the call's :class:`~futuremask.layout.TokenLayout`.
    """
    if handle.policy.is_causal or not (module.training and torch.is_grad_enabled()):
        return
    if inputs.get("labels") is None and inputs.get("prompt_mask") is None:
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
