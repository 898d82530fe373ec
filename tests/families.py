"""Tiny random-weight models of each supported VLM family, built offline, and their inputs.

One small builder per family returns a :class:`TinyVLM`: the model, a word-level tokenizer, the
token ids that stand for one image in a prompt (wrapper tokens plus the right number of
placeholders), the shape of one image's pixels and how a batch of images is collated.
:func:`build_batch` turns prompts (lists of words and :data:`IMAGE` markers) into left-padded
model inputs; :func:`build_inputs` does it for one prompt.

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
        image_shape: shape of the pixel tensor of one image.
        collate: ``images_per_row -> dict`` of pixel inputs (``pixel_values`` and friends) for a batch,
            from the list of ``image_shape`` tensors of each row.
        token_type_key: name of a per-token ``[B, L]`` input marking image placeholders with 1
            (``mm_token_type_ids`` for Qwen-VL, ``token_type_ids`` for Gemma3), or None.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    image_block: list[int]
    image_token_id: int
    image_shape: tuple[int, ...]
    collate: Callable[[list[list[torch.Tensor]]], dict[str, torch.Tensor]]
    token_type_key: str | None = None


def build_batch(vlm: TinyVLM, prompts: Sequence[Sequence[Any]], seeds: Sequence[int] | None = None) -> dict:
    """Model inputs for a batch of prompts, left padded as a processor pads them for generation.

    Args:
        vlm: the tiny model.
        prompts: per prompt, strings of space-separated vocabulary words and :data:`IMAGE` markers.
        seeds: per prompt, the seed of its random images (default ``0, 1, ...``); the same prompt and
            seed give the same pixels in any batch.

    Returns:
        ``input_ids`` and ``attention_mask`` long ``[B, L]``, pixel inputs when a prompt holds images,
        and the family's per-token type ids (long ``[B, L]``, 1 on image placeholders) when it has them.
    """
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    rows, images = [], []
    for segments, seed in zip(prompts, seeds, strict=True):
        ids, row_images = [vlm.tokenizer.bos_token_id], []
        for seg in segments:
            if seg is IMAGE:
                ids += vlm.image_block
                gen = torch.Generator().manual_seed(1000 * seed + len(row_images))
                row_images.append(torch.randn(vlm.image_shape, generator=gen))
            else:
                ids += vlm.tokenizer.convert_tokens_to_ids(seg.split())
        if vlm.tokenizer.unk_token_id in ids:
            raise ValueError(f"a word of {segments!r} is not in the tiny vocabulary")
        rows.append(ids)
        images.append(row_images)
    length = max(len(r) for r in rows)
    pad = vlm.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(images):
        inputs.update(vlm.collate(images))
    if vlm.token_type_key is not None:
        inputs[vlm.token_type_key] = (input_ids == vlm.image_token_id).long()
    return inputs


def build_inputs(vlm: TinyVLM, segments: Sequence[Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """:func:`build_batch` for one prompt: ``input_ids [1, L]`` and the rest, without padding."""
    return build_batch(vlm, [segments], [seed])


def _stack(key: str = "pixel_values") -> Callable[[list[list[torch.Tensor]]], dict[str, torch.Tensor]]:
    """Collate all images of the batch, in order, into one ``[N, ...]`` tensor."""
    return lambda images: {key: torch.stack([im for row in images for im in row])}


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

    def collate(images: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        # per image: the base tile + the tiles of the best grid pinpoint (one 32x32 tile here)
        flat = [im for row in images for im in row]
        return {"pixel_values": torch.stack(flat), "image_sizes": torch.tensor([[32, 32]] * len(flat))}

    with torch.no_grad():
        probe = collate([[torch.zeros(2, 3, 32, 32)]])
        feats = model.model.get_image_features(**probe, return_dict=True).pooler_output
    n_tokens = feats[0].shape[0]
    return TinyVLM("llava_next", model, tok, [image_id] * n_tokens, image_id, (2, 3, 32, 32), collate)


# --- Qwen2-VL / Qwen2.5-VL -------------------------------------------------------------------------

QWEN_SPECIAL = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_GRID = (1, 4, 4)  # (t, h, w) patches of 14x14; 2x2 spatial merge -> 4 tokens per image


def _qwen_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    start, end, image, video = tok.convert_tokens_to_ids(list(QWEN_SPECIAL))
    return dict(vision_start_token_id=start, vision_end_token_id=end, image_token_id=image, video_token_id=video)


def _qwen_collate(images: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Qwen-VL pixels: all patches of all images in one ``[patches, C * T * P * P]`` tensor + their grids."""
    flat = [im for row in images for im in row]
    return {"pixel_values": torch.cat(flat), "image_grid_thw": torch.tensor([list(QWEN_GRID)] * len(flat))}


def _qwen_vlm(name: str, model: PreTrainedModel, tok: PreTrainedTokenizerFast) -> TinyVLM:
    ids = _qwen_ids(tok)
    t, h, w = QWEN_GRID
    block = [ids["vision_start_token_id"]] + [ids["image_token_id"]] * (t * h * w // 4) + [ids["vision_end_token_id"]]
    shape = (t * h * w, 3 * 2 * 14 * 14)  # patches x (channels * temporal patch * patch * patch)
    return TinyVLM(name, model, tok, block, ids["image_token_id"], shape, _qwen_collate, "mm_token_type_ids")


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

    def collate(images: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        # [B, max images, C, H, W]; all-zero images pad the rows with fewer images (the model drops them)
        most = max(len(row) for row in images)
        pixel_values = torch.zeros(len(images), most, 3, 32, 32)
        for b, row in enumerate(images):
            for k, im in enumerate(row):
                pixel_values[b, k] = im
        return {"pixel_values": pixel_values}

    block = [fake, glob] + [image_id] * 4 + [fake]
    return TinyVLM("idefics3", model, tok, block, image_id, (3, 32, 32), collate)


# --- Gemma3 ----------------------------------------------------------------------------------------

GEMMA_SPECIAL = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
GEMMA_WINDOW = 6  # shorter than the test prompts, so the sliding-window layer really slides


def gemma3() -> TinyVLM:
    """Gemma3: SigLIP tower on 32x32 images of 8x8 patches, pooled to 4 soft tokens between BOI/EOI.

    Two layers: one sliding-window layer (window of :data:`GEMMA_WINDOW` tokens), one global layer.
    """
    tok = _tokenizer(*GEMMA_SPECIAL)
    boi, eoi, image_id = tok.convert_tokens_to_ids(list(GEMMA_SPECIAL))
    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16, query_pre_attn_scalar=16,
            max_position_embeddings=512, sliding_window=GEMMA_WINDOW, layer_types=["sliding_attention", "full_attention"],
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        mm_tokens_per_image=4, boi_token_index=boi, eoi_token_index=eoi, image_token_index=image_id,
    )
    model = _finish(_seeded(lambda: _gemma3_with_projection(config)), tok)

    block = [boi] + [image_id] * 4 + [eoi]
    return TinyVLM("gemma3", model, tok, block, image_id, (3, 32, 32), _stack(), token_type_key="token_type_ids")


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

    block = [start] + [image_id] * 4 + [end]
    return TinyVLM("internvl", model, tok, block, image_id, (3, 32, 32), _stack())


FAMILIES: dict[str, Callable[[], TinyVLM]] = {
    "llava_next": llava_next,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "idefics3": idefics3,
    "gemma3": gemma3,
    "internvl": internvl,
}
