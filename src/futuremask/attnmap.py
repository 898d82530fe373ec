"""Attention weights of one layer of a prompt pass under a policy (for :func:`futuremask.viz.plot_attention`).

The prefill runs on the SDPA (or merge) kernel as usual; only the query/key tensors that the chosen
layer hands to its attention function are kept (a wrapper on the registered function records
them). The weights are then recomputed from them a chunk of query rows at a time, with the mask
the model really used, or with the merge math (:func:`futuremask.merge.merged_logits`) when a merge
is on, so no ``[H, L, L]`` tensor is held and long prompts fit in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .hf import apply
from .hf_masks import prompt_rows
from .kernels.common import repeat_kv
from .layout import TokenLayout, text_config
from .merge import Merge, merged_logits
from .merge_spec import merge_spec
from .policies import get_policy, policy_mask

DEFAULT_CHUNK_BYTES = 64 * 2**20


@dataclass
class AttentionMap:
    """Attention weights of one layer (one head, or the mean over heads) of one sequence.

    Attributes:
        weights: float32 ``[L, L]``, row ``i`` = how query ``i`` spreads its attention over keys ``j``.
        layout: the sequence's :class:`TokenLayout` (``B = 1``).
        policy, merge, layer, head: what was run (``head=None``: mean over heads).
    """

    weights: torch.Tensor
    layout: TokenLayout
    policy: str
    merge: Merge | None
    layer: int
    head: int | None

    @property
    def title(self) -> str:
        merge = f" + merge({merge_spec(self.merge)})" if self.merge else ""
        head = "mean of heads" if self.head is None else f"head {self.head}"
        return f"{self.policy}{merge} — layer {self.layer}, {head}"

    @property
    def future_mass(self) -> torch.Tensor:
        """float ``[L]``: weight each query row puts on keys after it (``j > i``)."""
        return self.weights.triu(1).sum(-1)

    @property
    def sink_mass(self) -> torch.Tensor:
        """float ``[L]``: weight each query row puts on the sink (first valid) token."""
        return self.weights[:, int(self.layout.first_valid[0])]

    def summary(self) -> dict[str, float]:
        """Mean future and sink mass over visual and over text query rows."""
        valid = self.layout.valid[0]
        visual = self.layout.visual[0] & valid
        text = ~self.layout.visual[0] & valid
        out = {}
        for name, rows in (("visual", visual), ("text", text)):
            out[f"{name}_rows"] = float(rows.sum())
            out[f"{name}_future_mass"] = float(self.future_mass[rows].mean()) if rows.any() else float("nan")
            out[f"{name}_sink_mass"] = float(self.sink_mass[rows].mean()) if rows.any() else float("nan")
        return out


def _num_layers(model) -> int:
    config = text_config(model.config)
    return int(config.num_hidden_layers)


@contextlib.contextmanager
def _record_layer(impl: str, layer: int, policy_mask: bool) -> Iterator[dict[str, Any]]:
    """While active, the attention function registered as ``impl`` records its inputs at ``layer``.

    With ``policy_mask``, the mask recorded is the one the kernel applies: the prompt pass's policy rows
    (kept beside the model's own mask, :func:`futuremask.hf_masks.prompt_rows`) made dense."""
    original = ALL_ATTENTION_FUNCTIONS[impl]
    seen: dict[str, Any] = {"calls": 0}

    def recorder(module, query, key, value, attention_mask, *args, **kwargs):
        index = getattr(module, "layer_idx", None)
        index = seen["calls"] if index is None else index
        seen["calls"] += 1
        if index == layer:
            rows = prompt_rows(attention_mask) if policy_mask else None
            mask = attention_mask if rows is None else rows.dense()
            seen.update(query=query.detach(), key=key.detach(), mask=mask, scaling=kwargs.get("scaling"))
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    AttentionInterface.register(impl, recorder)
    try:
        yield seen
    finally:
        AttentionInterface.register(impl, original)


def _dense_mask(mask: Any, layout: TokenLayout, length: int) -> torch.Tensor:
    """bool ``[L, L]`` attended keys of row 0 from the mask the kernel got (None = causal over valid keys)."""
    if mask is None:
        return policy_mask("causal", layout)[0]
    if not isinstance(mask, torch.Tensor):
        raise RuntimeError(f"attention-map needs a dense mask; the model passed {type(mask).__name__}")
    mask = mask[0, 0, :length, :length] if mask.dim() == 4 else mask[0, :length, :length]
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    return mask.cpu()


def attention_map(
    model,
    inputs: Mapping[str, Any],
    policy: str = "causal",
    *,
    merge: Merge | str | None = None,
    layer: int = -1,
    head: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> AttentionMap:
    """Run one prefill of ``inputs`` (batch of 1) under ``policy`` and return a layer's attention weights.

    Args:
        model: a transformers VLM.
        inputs: the processor's output for one prompt (``input_ids [1, L]``, pixels, ...).
        policy: a name from :data:`futuremask.POLICIES`.
        merge: fold the future into the sink (:class:`Merge` or kind name); the weights then come from
            the merge math and the sink column carries the merged mass.
        layer: decoder layer of the text backbone (negative counts from the end).
        head: one query head, or None for the mean over heads.
        chunk_bytes: bound on the float32 scores held at once.

    Returns:
        An :class:`AttentionMap` with ``weights`` float32 ``[L, L]``.
    """
    merge = Merge.coerce(merge)
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError(f"attention_map draws one sequence; got a batch of {input_ids.shape[0]}")
    n_layers = _num_layers(model)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} does not exist: the text model has {n_layers} layers (0 .. {n_layers - 1})")
    layer %= n_layers
    layout = TokenLayout.from_inputs(
        model.config, input_ids=input_ids, attention_mask=inputs.get("attention_mask"),
        mm_token_type_ids=inputs.get("mm_token_type_ids"),
    ).to("cpu")
    handle = apply(model, policy, merge=merge, backend="sdpa")
    config = text_config(model.config)
    try:
        with _record_layer(config._attn_implementation, layer, merge is None) as seen, torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    if "query" not in seen:
        raise RuntimeError(f"layer {layer} never called its attention function; is this a decoder-only VLM?")
    query, key = seen["query"][0].float(), seen["key"][0].float()  # [H, L, D], [Hkv, Lk, D]
    heads, length, dim = query.shape
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head {head} does not exist: layer {layer} has {heads} query heads (0 .. {heads - 1})")
    key = repeat_kv(key[None], heads // key.shape[0])[0, :, :length]
    scale = seen["scaling"] if seen["scaling"] is not None else dim**-0.5
    base = _dense_mask(seen["mask"], layout, length).to(query.device)
    future = sinks = None
    if merge is not None:
        future = (policy_mask(get_policy(policy), layout)[0].to(query.device)) & ~base
        sinks = layout.sink_positions(merge.prefix)[0].to(query.device)
    weights = torch.zeros(length, length, dtype=torch.float32)
    step = max(1, chunk_bytes // (4 * 3 * heads * length))
    for start in range(0, length, step):
        rows = torch.arange(start, min(start + step, length), device=query.device)
        scores = torch.matmul(query[:, rows], key.transpose(-1, -2)) * scale  # [H, R, L]
        if merge is None:
            logits = scores.masked_fill(~base[rows], float("-inf"))
        else:
            logits = merged_logits(scores, base[rows], future[rows], rows, sinks, merge)
        w = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        weights[start : start + len(rows)] = (w.mean(0) if head is None else w[head]).cpu()
    return AttentionMap(weights, layout, get_policy(policy).name, merge, layer, head)


__all__ = ["AttentionMap", "attention_map"]
