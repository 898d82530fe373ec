"""Tiny random-weight models of each supported VLM family, built offline, and their inputs.

One small builder per family returns a :class:`TinyVLM`: the model, a word-level tokenizer, the
token ids that stand for one image in a prompt (wrapper tokens plus the right number of
placeholders) and a function making pixel inputs of the right shapes for ``n`` images.
:func:`build_inputs` turns a list of words and :data:`IMAGE` markers into model inputs.

Configs follow the tiny ones in transformers' own test suite (1-2 layers, hidden 32-64), sized so
that every image becomes only 4-10 visual tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3VisionConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipVisionConfig,
)

from futuremask.tiny import BASE_WORDS, tiny_tokenizer

IMAGE = object()
"""Marker for one image in the segments given to :func:`build_inputs`."""

HIDDEN = 64
HEADS, KV_HEADS = 4, 2


@dataclass
class TinyVLM:
    """A tiny model of one family with what is needed to build its inputs.

    Attributes:
        name: the family name used in test ids and docs.
        model: the random-weight model (eval mode, fp32).
        tokenizer: word-level tokenizer whose vocabulary holds the family's special tokens.
        image_block: token ids standing for one image in the prompt (wrappers + placeholders).
        image_token_id: the placeholder id the vision features replace.
        pixels: ``n_images -> dict`` of pixel inputs (``pixel_values`` and friends) for one prompt.
        token_type_key: name of a per-token ``[B, L]`` input marking image placeholders with 1
            (``mm_token_type_ids`` for Qwen-VL, ``token_type_ids`` for Gemma3), or None.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    image_block: list[int]
    image_token_id: int
    pixels: Callable[[int], dict[str, torch.Tensor]]
    token_type_key: str | None = None


def build_inputs(vlm: TinyVLM, segments: Sequence[Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt (batch of 1, no padding).

    Args:
        vlm: the tiny model.
        segments: strings of space-separated vocabulary words and :data:`IMAGE` markers, in order.
        seed: seed of the random pixels.

    Returns:
        ``input_ids`` long ``[1, L]``, ``attention_mask`` long ``[1, L]``, pixel inputs when the
        prompt holds images, and the family's per-token type ids when it has them.
    """
    ids = [vlm.tokenizer.bos_token_id]
    n_images = 0
    for seg in segments:
        if seg is IMAGE:
            ids += vlm.image_block
            n_images += 1
        else:
            words = seg.split()
            ids += vlm.tokenizer.convert_tokens_to_ids(words)
    if vlm.tokenizer.unk_token_id in ids:
        raise ValueError(f"a word of {segments!r} is not in the tiny vocabulary")
    input_ids = torch.tensor([ids])
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if n_images:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            inputs.update(vlm.pixels(n_images))
    if vlm.token_type_key is not None:
        inputs[vlm.token_type_key] = (input_ids == vlm.image_token_id).long()
    return inputs


def _tokenizer(*extra: str) -> PreTrainedTokenizerFast:
    return tiny_tokenizer(list(BASE_WORDS) + list(extra))


def _finish(model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model


def _seeded(make: Callable[[], PreTrainedModel], seed: int = 0) -> PreTrainedModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def _llama(tok: PreTrainedTokenizerFast, cls=LlamaConfig, **kw) -> Any:
    return cls(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw,
    )


# --- LLaVA-NeXT ------------------------------------------------------------------------------------


def llava_next() -> TinyVLM:
    """LLaVA-NeXT: CLIP tower on 32x32 tiles of 16x16 patches; one tile grid (anyres) + base tile.

    An image of 32x32 gives 4 base tokens + 2x2 grid tokens + 2 row newlines = 10 placeholders.
    """
    tok = _tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    config = LlavaNextConfig(
        text_config=_llama(tok),
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=16,
        ),
        image_token_index=image_id, image_grid_pinpoints=[[32, 32]], vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_seq_length=4, pad_token_id=tok.pad_token_id,
    )
    model = _finish(_seeded(lambda: LlavaNextForConditionalGeneration(config)), tok)

    def pixels(n: int) -> dict[str, torch.Tensor]:
        # per image: the base tile + the tiles of the best grid pinpoint (one 32x32 tile here)
        return {"pixel_values": torch.randn(n, 2, 3, 32, 32), "image_sizes": torch.tensor([[32, 32]] * n)}

    with torch.no_grad():
        probe = pixels(1)
        feats = model.model.get_image_features(**probe, return_dict=True).pooler_output
    n_tokens = feats[0].shape[0]
    return TinyVLM("llava_next", model, tok, [image_id] * n_tokens, image_id, pixels)


# --- Qwen2-VL / Qwen2.5-VL -------------------------------------------------------------------------

QWEN_SPECIAL = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_GRID = (1, 4, 4)  # (t, h, w) patches of 14x14; 2x2 spatial merge -> 4 tokens per image


def _qwen_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    start, end, image, video = tok.convert_tokens_to_ids(list(QWEN_SPECIAL))
    return dict(vision_start_token_id=start, vision_end_token_id=end, image_token_id=image, video_token_id=video)


def _qwen_pixels(patch: int = 14, temporal: int = 2) -> Callable[[int], dict[str, torch.Tensor]]:
    t, h, w = QWEN_GRID

    def pixels(n: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.randn(n * t * h * w, 3 * temporal * patch * patch),
            "image_grid_thw": torch.tensor([list(QWEN_GRID)] * n),
        }

    return pixels


def _qwen_vlm(name: str, model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> TinyVLM:
    ids = _qwen_ids(tok)
    t, h, w = QWEN_GRID
    block = [ids["vision_start_token_id"]] + [ids["image_token_id"]] * (t * h * w // 4) + [ids["vision_end_token_id"]]
    return TinyVLM(name, model, tok, block, ids["image_token_id"], _qwen_pixels(), token_type_key="mm_token_type_ids")


def _qwen_text(tok: PreTrainedTokenizerFast) -> dict[str, Any]:
    return dict(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )


def qwen2_vl() -> TinyVLM:
    """Qwen2-VL: M-RoPE text model, 14x14 patches, 2x2 merge; 4 image tokens between vision start/end."""
    tok = _tokenizer(*QWEN_SPECIAL)
    config = Qwen2VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=HIDDEN, mlp_ratio=2, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        **_qwen_ids(tok),
    )
    return _qwen_vlm("qwen2_vl", _finish(_seeded(lambda: Qwen2VLForConditionalGeneration(config)), tok), tok)


def qwen2_5_vl() -> TinyVLM:
    """Qwen2.5-VL: as Qwen2-VL with the windowed RMSNorm/SwiGLU vision tower."""
    tok = _tokenizer(*QWEN_SPECIAL)
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        **_qwen_ids(tok),
    )
    return _qwen_vlm("qwen2_5_vl", _finish(_seeded(lambda: Qwen2_5_VLForConditionalGeneration(config)), tok), tok)


# --- Idefics3 --------------------------------------------------------------------------------------

IDEFICS_SPECIAL = ("<fake_token_around_image>", "<global-img>")


def idefics3() -> TinyVLM:
    """Idefics3: SigLIP-like tower on 32x32 images of 8x8 patches, pixel shuffle x2 -> 4 tokens per image."""
    tok = _tokenizer(*IDEFICS_SPECIAL)
    image_id = tok.convert_tokens_to_ids("<image>")
    fake, glob = tok.convert_tokens_to_ids(list(IDEFICS_SPECIAL))
    config = Idefics3Config(
        text_config=_llama(tok),
        vision_config=Idefics3VisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        image_token_id=image_id, scale_factor=2, pad_token_id=tok.pad_token_id,
    )
    model = _finish(_seeded(lambda: Idefics3ForConditionalGeneration(config)), tok)

    def pixels(n: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(1, n, 3, 32, 32)}

    block = [fake, glob] + [image_id] * 4 + [fake]
    return TinyVLM("idefics3", model, tok, block, image_id, pixels)


# --- Gemma3 ----------------------------------------------------------------------------------------

GEMMA_SPECIAL = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")


def gemma3() -> TinyVLM:
    """Gemma3: SigLIP tower on 32x32 images of 8x8 patches, pooled to 4 soft tokens between BOI/EOI.

    Two layers: one sliding-window layer, one global layer (window larger than the test prompts).
    """
    tok = _tokenizer(*GEMMA_SPECIAL)
    boi, eoi, image_id = tok.convert_tokens_to_ids(list(GEMMA_SPECIAL))
    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16, query_pre_attn_scalar=16,
            max_position_embeddings=512, sliding_window=256, layer_types=["sliding_attention", "full_attention"],
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        mm_tokens_per_image=4, boi_token_index=boi, eoi_token_index=eoi, image_token_index=image_id,
    )
    model = _finish(_seeded(lambda: _gemma3_with_projection(config)), tok)

    def pixels(n: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(n, 3, 32, 32)}

    block = [boi] + [image_id] * 4 + [eoi]
    return TinyVLM("gemma3", model, tok, block, image_id, pixels, token_type_key="token_type_ids")


def _gemma3_with_projection(config: Gemma3Config) -> Gemma3ForConditionalGeneration:
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises the image projection to zeros: every image token would embed to 0
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.05)
    return model


# --- InternVL --------------------------------------------------------------------------------------

INTERNVL_SPECIAL = ("<img>", "</img>", "<IMG_CONTEXT>")


def internvl() -> TinyVLM:
    """InternVL: InternViT-like tower on 32x32 images of 8x8 patches, pixel shuffle 0.5 -> 4 tokens; Qwen2 LM."""
    tok = _tokenizer(*INTERNVL_SPECIAL)
    start, end, image_id = tok.convert_tokens_to_ids(list(INTERNVL_SPECIAL))
    config = InternVLConfig(
        text_config=_llama(tok, cls=Qwen2Config),
        vision_config=InternVLVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=[32, 32], patch_size=[8, 8],
        ),
        image_token_id=image_id, image_seq_length=4, downsample_ratio=0.5,
    )
    model = _finish(_seeded(lambda: InternVLForConditionalGeneration(config)), tok)

    def pixels(n: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(n, 3, 32, 32)}

    block = [start] + [image_id] * 4 + [end]
    return TinyVLM("internvl", model, tok, block, image_id, pixels)


FAMILIES: dict[str, Callable[[], TinyVLM]] = {
    "llava_next": llava_next,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "idefics3": idefics3,
    "gemma3": gemma3,
    "internvl": internvl,
}
