"""The masks of a model call under :func:`futuremask.apply` (DESIGN §6): one guard, one builder per backend.

transformers asks the registered mask builder for every mask a forward needs (full, sliding, chunked).

* The guard, :func:`is_prompt_pass`, decides which pass the mask is for: not ours (no handle, or nothing
  differs from the stock mask) and decoding steps get the model's own mask; a prompt split over several
  passes is refused; a prompt pass gets the call's :class:`PromptPass` (:func:`prompt_pass`).
* One builder per backend (:data:`BUILDERS`, as transformers keys its own) makes the prompt pass's mask
  and records it in the :class:`PromptPass`: sdpa, eager and merge keep the policy's rows
  (:class:`~futuremask.kernels.rows.FutureRows`) beside the model's own mask, flex ORs the policy into
  the ``mask_function`` of one ``BlockMask``.
* Each attention layer asks :func:`layer_mask` what to run: the policy's mask, or the model's own on a
  layer the schedule leaves causal. A prompt-pass layer that receives a mask no builder made is refused.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.masking_utils import flex_attention_mask, sdpa_mask

from .kernels.rows import FutureRows, MaskMod
from .layout import TokenLayout
from .policies import overlay_mod


class PromptSplitError(RuntimeError):
    """A prompt reached the model in several passes, where the policy cannot be applied exactly."""


@dataclass(frozen=True)
class LayerMasks:
    """One mask a builder handed to the model in a prompt pass, and what each kind of layer runs under it.

    Attributes:
        built: the object the model received (a tensor, a ``BlockMask``, or None for SDPA's ``is_causal``).
        policy: what a layer under the policy runs: :class:`FutureRows` (sdpa, eager, merge) or the
            policy's ``BlockMask`` (flex).
        causal: what a layer the schedule leaves causal runs: the model's own mask.
    """

    built: Any
    policy: Any
    causal: Any


@dataclass
class PromptPass:
    """What the mask builders prepared for the attention layers of one prompt pass.

    Attributes:
        layout: the call's :class:`TokenLayout` (``[B, L]``, ``L`` the pass's queries).
        overlay: the policy's extra future pairs bound to ``layout`` (``mask_mod``).
        layers: the text layers the policy applies to, or None for all of them.
        sinks: long ``[B, L, p]``, each query's sink positions (merge only, else None).
        segment_end: long ``[B, L]``, one past the end of each query's segment (merge only, else None).
        masks: every mask built for this pass (one per mask type: full, sliding, ...).
    """

    layout: TokenLayout
    overlay: MaskMod
    layers: frozenset[int] | None
    sinks: torch.Tensor | None = None
    segment_end: torch.Tensor | None = None
    masks: list[LayerMasks] = field(default_factory=list)

    def find(self, mask: Any) -> LayerMasks | None:
        """The record of ``mask`` (by identity: the very object a builder returned), or None."""
        return next((m for m in self.masks if m.built is mask), None)


@dataclass
class Call:
    """The state of one model call under a handle.

    The layout is read from the call's inputs only when a prompt pass asks for it, so decoding
    steps cost nothing.
    """

    handle: Any  # the futuremask.hf.FutureMask
    inputs: dict[str, Any]
    missing_input: str | None = None  # why the family's own prompt mask is undefined for this call, if it is
    prompt: PromptPass | None = None
    _layout: TokenLayout | None = None

    @property
    def layout(self) -> TokenLayout:
        if self._layout is None:
            self._layout = TokenLayout.from_inputs(self.handle.model.config, **self.inputs)
        return self._layout


ACTIVE: contextvars.ContextVar[Call | None] = contextvars.ContextVar("futuremask_call", default=None)


# --- the guard -------------------------------------------------------------------------------------


def is_prompt_pass(call: Call | None, q_length: int, q_offset, kv_offset) -> bool:
    """Whether a mask request is a prompt pass under a policy (the whole prompt, from an empty cache).

    False where the model's own mask is exact: no handle, a plain causal handle, a decoding step (one
    query after the cache). A prompt that arrives after cached tokens raises :class:`PromptSplitError`; a
    prompt pass without an input the family's own mask needs (``Call.missing_input``) raises ValueError.
    """
    if call is None:
        return False
    if call.missing_input is not None and int(q_offset) == 0 and q_length > 1:
        raise ValueError(call.missing_input)
    if call.handle.is_plain_causal:
        return False
    if int(q_offset) == 0 and int(kv_offset) == 0:
        return q_length > 1
    if q_length > 1:
        raise PromptSplitError(
            f"futuremask policy {call.handle.policy.name!r} needs the whole prompt in one pass, but "
            f"{q_length} tokens arrived after {int(q_offset)} cached ones (chunked prefill, or "
            "generate() on a pre-filled cache). Run the full prompt in one call with an empty cache."
        )
    return False


def prompt_pass(call: Call, batch_size: int, q_length: int) -> PromptPass | None:
    """The call's :class:`PromptPass` (made on its first mask), None for a policy with no future pairs
    (``causal`` with a merge: the stock mask is exact). A pass whose shape ``[B, L]`` is not the call's
    ``input_ids`` raises RuntimeError."""
    layout = call.layout
    if layout.length != q_length or layout.batch_size != batch_size:
        raise RuntimeError(
            f"futuremask saw a prompt pass of shape [{batch_size}, {q_length}] that does not match the "
            "input_ids of the model call; call the model with input_ids of the whole prompt"
        )
    if call.prompt is None:
        # future keys only (kv > q, overlay_mod): on a sliding-window or chunked layer (Gemma3, Qwen2 with
        # use_sliding_window) the past stays limited to the window, as the model was trained, and the
        # model's own mask keeps packed sequences apart for j <= i
        overlay = overlay_mod(call.handle.policy, layout)
        if overlay is None:
            return None
        merge = call.handle.merge
        call.prompt = PromptPass(
            layout, overlay, call.handle.layers,
            sinks=None if merge is None else layout.sequence_sinks(merge.prefix),
            segment_end=None if merge is None else layout.segment_end,
        )
    return call.prompt


# --- one builder per backend -----------------------------------------------------------------------


def _rows_mask(prompt: PromptPass, stock: Callable[..., Any], args: dict[str, Any]) -> Any:
    """sdpa, eager, merge: the model's own mask (None when exactly causal: SDPA's ``is_causal`` path) stands
    for the pass; the kernels find the policy's rows beside it, evaluated a block at a time."""
    base = stock(**args)
    rows = FutureRows(prompt.overlay, base, args["q_length"], args["batch_size"],
                      on=prompt.layout.valid.device, kv=int(args["kv_length"]))
    prompt.masks.append(LayerMasks(built=base, policy=rows, causal=base))
    return base


def _flex_mask(prompt: PromptPass, stock: Callable[..., Any], args: dict[str, Any]) -> Any:
    """flex: one ``BlockMask`` of the model's own ``mask_function`` OR the policy (the model's own beside it
    only with a per-layer schedule)."""
    causal = stock(**args) if prompt.layers is not None else None
    mask_function = _or_guarded(args["mask_function"], prompt.overlay, prompt.layout.length)
    mask = stock(**{**args, "mask_function": mask_function})
    prompt.masks.append(LayerMasks(built=mask, policy=mask, causal=causal))
    return mask


def _or_guarded(mask_function: MaskMod, overlay: MaskMod, length: int) -> MaskMod:
    """``mask_function OR overlay``, the overlay evaluated only for keys inside the prompt."""

    def mod(b, h, q, kv):
        inside = kv < length
        return mask_function(b, h, q, kv) | (overlay(b, h, q, kv.clamp(max=length - 1)) & inside)

    return mod


PromptBuilder = Callable[[PromptPass, Callable[..., Any], dict[str, Any]], Any]

BUILDERS: dict[str, tuple[Callable[..., Any], PromptBuilder]] = {
    "sdpa": (sdpa_mask, _rows_mask),
    "eager": (sdpa_mask, _rows_mask),
    "merge": (sdpa_mask, _rows_mask),
    "flex": (flex_attention_mask, _flex_mask),
}
"""backend -> (transformers' own builder, the prompt pass's builder on top of it)."""


def mask_builder(backend: str) -> Callable[..., Any]:
    """The function registered with transformers' ``AttentionMaskInterface`` for ``backend``."""
    stock, build_prompt = BUILDERS[backend]

    def build(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
        args = dict(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                    kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)
        call = ACTIVE.get()
        if not is_prompt_pass(call, q_length, q_offset, kv_offset):
            return stock(**args)
        prompt = prompt_pass(call, batch_size, q_length)
        return stock(**args) if prompt is None else build_prompt(prompt, stock, args)

    return build


# --- what a layer runs -----------------------------------------------------------------------------


def layer_mask(module: torch.nn.Module, attention_mask: Any) -> Any:
    """The mask attention ``module`` runs for the ``attention_mask`` the model handed it.

    In a prompt pass: the policy's (:attr:`LayerMasks.policy`) on the layers it applies to, the model's own
    elsewhere. Outside one (decoding steps, no policy): ``attention_mask`` as given. A prompt-pass layer
    that receives a mask no builder made (the model changed it on the way) is refused rather than run causal.
    """
    prompt = _active_prompt()
    if prompt is None:
        return attention_mask
    masks = prompt.find(attention_mask)
    if masks is None:
        raise RuntimeError(
            f"futuremask: layer {getattr(module, 'layer_idx', '?')} of a prompt pass received an attention "
            "mask that futuremask did not build (the model changed it on the way), so the policy cannot be "
            "applied to it"
        )
    return masks.policy if on_layer(module, prompt.layers) else masks.causal


def prompt_rows(attention_mask: Any) -> FutureRows | None:
    """The policy's rows of the prompt pass whose model mask is ``attention_mask`` (None otherwise)."""
    prompt = _active_prompt()
    masks = prompt.find(attention_mask) if prompt is not None else None
    return masks.policy if masks is not None and isinstance(masks.policy, FutureRows) else None


def _active_prompt() -> PromptPass | None:
    call = ACTIVE.get()
    return call.prompt if call is not None else None


def on_layer(module: torch.nn.Module, layers: frozenset[int] | None) -> bool:
    """Whether a policy on ``layers`` (None: all) applies to attention ``module`` (by its ``layer_idx``)."""
    if layers is None:
        return True
    index = getattr(module, "layer_idx", None)
    if index is None:
        raise RuntimeError(
            f"a per-layer schedule needs the attention modules' layer_idx, which {type(module).__name__} "
            "does not have; apply the policy to every layer (layers=None)"
        )
    return int(index) in layers
