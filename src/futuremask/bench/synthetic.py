"""A LLaVA-architecture model of any size with random weights, and a synthetic prompt for it.

The benchmark measures what a mask policy changes: the text backbone's attention. The prompt is
therefore a sequence of token ids in which every image is a run of ``tokens_per_image`` image
placeholder ids (the positions the vision features would fill) between runs of text ids. It is fed
*without* ``pixel_values``: the placeholders keep their embedding-table vectors, so the vision tower
(whose cost is the same under every policy) is left out of the timings, while the layout, the mask
and the backbone's work are exactly those of a real multimodal prompt of that shape.
"""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration

from ..layout import text_config
from ..tiny import llava_config, random_model
from .shapes import PromptShape, SyntheticSize


def synthetic_llava(size: SyntheticSize | None = None, *, seed: int = 0) -> LlavaForConditionalGeneration:
    """A random-weight ``LlavaForConditionalGeneration``: a Llama backbone of ``size``, a tiny CLIP tower.

    The image placeholder is the last id of the vocabulary (``config.image_token_id``); id 0 is padding,
    1 is BOS and 2 is EOS. Weights are ``N(0, 0.02)`` from ``seed``, in float32, in eval mode.
    """
    size = SyntheticSize() if size is None else size
    if size.hidden % size.heads or size.heads % size.kv_heads:
        raise ValueError(
            f"hidden ({size.hidden}) must be a multiple of heads ({size.heads}) and heads a multiple of "
            f"kv_heads ({size.kv_heads})"
        )
    config = llava_config(
        vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate_size(),
        num_layers=size.layers, num_heads=size.heads, num_kv_heads=size.kv_heads, max_positions=size.max_positions,
        image_token_id=size.vocab - 1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = random_model(config, seed)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # benchmarks decode a fixed number of tokens
    return model


def parameter_count(model: torch.nn.Module, text_only: bool = True) -> int:
    """Number of parameters (of the language model and LM head only when ``text_only``)."""
    if not text_only:
        return sum(p.numel() for p in model.parameters())
    lm = model.get_decoder() if hasattr(model, "get_decoder") else model
    head = model.get_output_embeddings()
    n = sum(p.numel() for p in lm.parameters())
    if head is not None and head.weight is not lm.get_input_embeddings().weight:
        n += head.weight.numel()
    return n


def image_token_id(config) -> int:
    """The image placeholder id of a (VLM) config."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= 0:
            return value
    raise ValueError(
        f"{type(config).__name__} has no image_token_id; the benchmark needs a VLM config that has one"
    )


def synthetic_prompt(config, shape: PromptShape, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, long ``[batch, shape.length]``, for a model with ``config``.

    Text ids are drawn uniformly from ``[3, vocab)`` minus the placeholder ids; every batch row is the
    same prompt (no padding).
    """
    if shape.text_tokens < shape.images + 1:
        raise ValueError(
            f"text_tokens ({shape.text_tokens}) must be at least images + 1 ({shape.images + 1})"
        )
    text_cfg = text_config(config)
    vocab = text_cfg.vocab_size
    image_id = image_token_id(config)
    reserved = {image_id, getattr(config, "video_token_id", None), getattr(config, "video_token_index", None)}
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(3, vocab, (shape.text_tokens,), generator=gen)
    for rid in reserved:
        if isinstance(rid, int):
            text = torch.where(text == rid, torch.full_like(text, 3), text)
    text[0] = getattr(text_cfg, "bos_token_id", None) or 1
    bounds = torch.linspace(0, shape.text_tokens, shape.images + 2).round().long().tolist()
    parts = []
    for i in range(shape.images + 1):
        parts.append(text[bounds[i] : bounds[i + 1]])
        if i < shape.images:
            parts.append(torch.full((shape.tokens_per_image,), image_id, dtype=torch.long))
    ids = torch.cat(parts)[None].expand(shape.batch, -1).contiguous()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
