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
    Gemma2Config,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3VisionConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PixtralVisionConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMVisionConfig,
)

from futuremask.tiny import BASE_WORDS, tiny_tokenizer

IMAGE = object()
"""Marker for one image in the segments given to :func:`build_inputs`."""

VIDEO = object()
"""Marker for one video in the segments given to :func:`build_inputs` (families with :attr:`TinyVLM.video`)."""

HIDDEN = 64
HEADS, KV_HEADS = 4, 2


Collate = Callable[[list[list[torch.Tensor]]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class VideoSpec:
    """How one video enters a prompt of a family that takes ``pixel_values_videos``.

    Attributes:
        block: token ids standing for one video (wrappers, per-frame text, placeholders).
        token_id: the video placeholder id the vision features replace.
        shape: shape of the pixel tensor of one video.
        collate: ``videos_per_row -> dict`` of video pixel inputs for a batch.
    """

    block: list[int]
    token_id: int
    shape: tuple[int, ...]
    collate: Collate


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
        token_type_key: name of a per-token ``[B, L]`` input marking image placeholders with 1 and video
            placeholders with 2 (``mm_token_type_ids`` for Qwen-VL, ``token_type_ids`` for Gemma3), or None.
        video: how a video enters the prompt, for families with a video path; else None.
        image_blocks: whether the model lets the tokens of one contiguous image run see each other by
            itself (Gemma3's bidirectional image blocks), so the dense references add them.
        prefix_lm: whether ``token_type_key`` marks PaliGemma's prefix (0 on the prompt) instead of modalities.
    """

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    image_block: list[int]
    image_token_id: int
    image_shape: tuple[int, ...]
    collate: Collate
    token_type_key: str | None = None
    video: VideoSpec | None = None
    image_blocks: bool = False
    prefix_lm: bool = False

    def modality(self, input_ids: torch.Tensor) -> torch.Tensor:
        """long, shaped as ``input_ids``: 1 on image placeholders, 2 on video placeholders, else 0."""
        modality = (input_ids == self.image_token_id).long()
        if self.video is not None:
            modality[input_ids == self.video.token_id] = 2
        return modality


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
    rows, images, videos = [], [], []
    for segments, seed in zip(prompts, seeds, strict=True):
        ids, row_images, row_videos = [vlm.tokenizer.bos_token_id], [], []
        for seg in segments:
            if seg is IMAGE:
                ids += vlm.image_block
                gen = torch.Generator().manual_seed(1000 * seed + len(row_images))
                row_images.append(torch.randn(vlm.image_shape, generator=gen))
            elif seg is VIDEO:
                if vlm.video is None:
                    raise ValueError(f"{vlm.name} has no video path")
                ids += vlm.video.block
                gen = torch.Generator().manual_seed(1000 * seed + 500 + len(row_videos))
                row_videos.append(torch.randn(vlm.video.shape, generator=gen))
            else:
                ids += vlm.tokenizer.convert_tokens_to_ids(seg.split())
        if vlm.tokenizer.unk_token_id in ids:
            raise ValueError(f"a word of {segments!r} is not in the tiny vocabulary")
        rows.append(ids)
        images.append(row_images)
        videos.append(row_videos)
    length = max(len(r) for r in rows)
    pad = vlm.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(images):
        inputs.update(vlm.collate(images))
    if any(videos):
        inputs.update(vlm.video.collate(videos))
    if vlm.token_type_key is not None:
        inputs[vlm.token_type_key] = torch.zeros_like(input_ids) if vlm.prefix_lm else vlm.modality(input_ids)
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
QWEN_VIDEO_GRID = (2, 4, 4)  # 4 frames, temporal patch 2 -> 2 groups of 4 tokens per video


def _qwen_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    start, end, image, video = tok.convert_tokens_to_ids(list(QWEN_SPECIAL))
    return dict(vision_start_token_id=start, vision_end_token_id=end, image_token_id=image, video_token_id=video)


def _qwen_collate(kind: str = "image", grid: tuple[int, int, int] = QWEN_GRID) -> Collate:
    """Qwen-VL pixels: all patches of all images (or videos) in one ``[patches, C * T * P * P]`` tensor + grids."""
    suffix = "" if kind == "image" else "_videos"

    def collate(items: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        flat = [x for row in items for x in row]
        return {f"pixel_values{suffix}": torch.cat(flat), f"{kind}_grid_thw": torch.tensor([list(grid)] * len(flat))}

    return collate


def _qwen_vlm(name: str, model: PreTrainedModel, tok: PreTrainedTokenizerFast, patch: int = 14,
              frames_apart: bool = False) -> TinyVLM:
    """A tiny Qwen-VL: images of :data:`QWEN_GRID` patches, videos of :data:`QWEN_VIDEO_GRID` (4 frames).

    ``frames_apart``: the video's temporal groups are written one per ``<|vision_start|> .. <|vision_end|>``
    with a timestamp word before each, as Qwen3-VL's processor writes them; else one run (Qwen2-VL).
    """
    ids = _qwen_ids(tok)
    start, end = ids["vision_start_token_id"], ids["vision_end_token_id"]
    t, h, w = QWEN_GRID
    block = [start] + [ids["image_token_id"]] * (t * h * w // 4) + [end]
    shape = (t * h * w, 3 * 2 * patch * patch)  # patches x (channels * temporal patch * patch * patch)
    vt, vh, vw = QWEN_VIDEO_GRID
    per_group = [ids["video_token_id"]] * (vh * vw // 4)
    if frames_apart:
        stamps = tok.convert_tokens_to_ids([str(k) for k in range(vt)])
        video_block = [x for k in range(vt) for x in [stamps[k], start, *per_group, end]]
    else:
        video_block = [start] + per_group * vt + [end]
    video = VideoSpec(video_block, ids["video_token_id"], (vt * vh * vw, 3 * 2 * patch * patch),
                      _qwen_collate("video", QWEN_VIDEO_GRID))
    return TinyVLM(name, model, tok, block, ids["image_token_id"], shape, _qwen_collate(), "mm_token_type_ids",
                   video=video)


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

    block = [fake, glob] + [image_id] * 4 + [fake]
    return TinyVLM("idefics3", model, tok, block, image_id, (3, 32, 32), _padded_images(32))


def _padded_images(size: int) -> Collate:
    """``[B, max images, C, H, W]``; all-zero images pad the rows with fewer images (the model drops them)."""

    def collate(images: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        most = max(len(row) for row in images)
        pixel_values = torch.zeros(len(images), most, 3, size, size)
        for b, row in enumerate(images):
            for k, im in enumerate(row):
                pixel_values[b, k] = im
        return {"pixel_values": pixel_values}

    return collate


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
    return TinyVLM("gemma3", model, tok, block, image_id, (3, 32, 32), _stack(), token_type_key="token_type_ids",
                  image_blocks=True)


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


def qwen3_vl() -> TinyVLM:
    """Qwen3-VL: interleaved M-RoPE text model, 16x16 patches, 2x2 merge, deepstack features added after layer 0.

    A video's frames sit in separate vision start/end spans, each after a timestamp word (as the
    processor writes ``<t seconds>``), so each temporal group is its own run of video tokens.
    """
    tok = _tokenizer(*QWEN_SPECIAL)
    text = _qwen_text(tok)
    text["head_dim"] = HIDDEN // HEADS
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=HIDDEN,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        **_qwen_ids(tok),
    )
    model = _finish(_seeded(lambda: Qwen3VLForConditionalGeneration(config)), tok)
    return _qwen_vlm("qwen3_vl", model, tok, patch=16, frames_apart=True)


# --- LLaVA-OneVision -------------------------------------------------------------------------------

ONEVISION_FRAMES = 3


def llava_onevision() -> TinyVLM:
    """LLaVA-OneVision: SigLIP tower on 32x32 tiles of 16x16 patches, anyres-max, and its video path.

    A 32x64 image: 4 base tokens + a 2x4 grid of tile features that ``anyres_max_1`` shrinks to 1x2, + one
    ``image_newline`` per row = 7 placeholders. A video of 3 frames: each frame's 2x2 features pooled to
    1x1, + one trailing newline = 4 video placeholders, all contiguous.
    """
    tok = _tokenizer("<video>")
    image_id, video_id = tok.convert_tokens_to_ids(["<image>", "<video>"])
    config = LlavaOnevisionConfig(
        text_config=_llama(tok, cls=Qwen2Config),
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=16,
        ),
        image_token_index=image_id, video_token_index=video_id, image_grid_pinpoints=[[32, 64]],
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_1",
    )
    model = _finish(_seeded(lambda: LlavaOnevisionForConditionalGeneration(config)), tok)

    def collate(images: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        flat = [im for row in images for im in row]  # per image: base tile + the 1x2 grid of tiles
        return {"pixel_values": torch.stack(flat), "image_sizes": torch.tensor([[32, 64]] * len(flat))}

    def collate_videos(videos: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {"pixel_values_videos": torch.stack([v for row in videos for v in row])}

    with torch.no_grad():
        n_image = model.model.get_image_features(**collate([[torch.zeros(3, 3, 32, 32)]]), return_dict=True)
        n_video = model.model.get_video_features(torch.zeros(1, ONEVISION_FRAMES, 3, 32, 32), return_dict=True)
    n_image, n_video = n_image.pooler_output[0].shape[0], n_video.pooler_output.shape[1]
    video = VideoSpec([video_id] * n_video, video_id, (ONEVISION_FRAMES, 3, 32, 32), collate_videos)
    return TinyVLM("llava_onevision", model, tok, [image_id] * n_image, image_id, (3, 3, 32, 32), collate,
                   video=video)


# --- Mistral3 / Pixtral ----------------------------------------------------------------------------

PIXTRAL_SPECIAL = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")


def mistral3() -> TinyVLM:
    """Mistral3 (Pixtral tower): 32x32 images of 8x8 patches, 2x2 patch merger -> a 2x2 grid of ``[IMG]``.

    As Pixtral's processor writes an image: each row of ``[IMG]`` ends with ``[IMG_BREAK]``, the last
    row with ``[IMG_END]`` instead; only ``[IMG]`` carries vision features.
    """
    tok = _tokenizer(*PIXTRAL_SPECIAL)
    image_id, brk, end = tok.convert_tokens_to_ids(list(PIXTRAL_SPECIAL))
    config = Mistral3Config(
        text_config=_llama(tok, cls=MistralConfig, head_dim=HIDDEN // HEADS),
        vision_config=PixtralVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=8, head_dim=16,
        ),
        image_token_index=image_id, spatial_merge_size=2, vision_feature_layer=-1,
    )
    model = _finish(_seeded(lambda: Mistral3ForConditionalGeneration(config)), tok)

    def collate(images: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        flat = [im for row in images for im in row]
        return {"pixel_values": torch.stack(flat), "image_sizes": torch.tensor([[32, 32]] * len(flat))}

    block = [image_id, image_id, brk, image_id, image_id, end]
    return TinyVLM("mistral3", model, tok, block, image_id, (3, 32, 32), collate)


# --- PaliGemma / PaliGemma2 ------------------------------------------------------------------------


def _paligemma(name: str, text_config: Any, tok: PreTrainedTokenizerFast) -> TinyVLM:
    """PaliGemma: SigLIP tower on 16x16 images of 8x8 patches -> 4 ``<image>`` tokens, Gemma(2) text model.

    Its inputs carry ``token_type_ids`` as PaliGemma's processor writes them: 0 on the whole prompt
    (the bidirectional prefix); appended tokens are the causal suffix (1).
    """
    image_id = tok.convert_tokens_to_ids("<image>")
    config = PaliGemmaConfig(
        text_config=text_config,
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=8, projection_dim=HIDDEN,
        ),
        image_token_index=image_id, projection_dim=HIDDEN,
    )
    model = _finish(_seeded(lambda: PaliGemmaForConditionalGeneration(config)), tok)
    return TinyVLM(name, model, tok, [image_id] * 4, image_id, (3, 16, 16), _stack(), token_type_key="token_type_ids",
                   prefix_lm=True)


def _gemma_text(tok: PreTrainedTokenizerFast, cls=GemmaConfig, **kw) -> Any:
    return cls(
        vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw,
    )


def paligemma() -> TinyVLM:
    """PaliGemma (v1): Gemma text model, full attention."""
    tok = _tokenizer()
    return _paligemma("paligemma", _gemma_text(tok), tok)


def paligemma2() -> TinyVLM:
    """PaliGemma2: Gemma2 text model, a sliding-window layer then a global one, attention logit softcapping."""
    tok = _tokenizer()
    text = _gemma_text(tok, cls=Gemma2Config, sliding_window=GEMMA_WINDOW, query_pre_attn_scalar=16,
                       layer_types=["sliding_attention", "full_attention"], attn_logit_softcapping=2.0,
                       final_logit_softcapping=30.0)
    return _paligemma("paligemma2", text, tok)


# --- SmolVLM ---------------------------------------------------------------------------------------

SMOLVLM_SPECIAL = ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>")


def smolvlm(image_size: int = 32, patch_size: int = 8, extra_words: Sequence[str] = ()) -> TinyVLM:
    """SmolVLM: Idefics3's layout on the SmolVLM classes; 32x32 images of 8x8 patches, pixel shuffle x2 -> 4 tokens.

    ``image_size`` / ``patch_size`` / ``extra_words`` size it for a real processor's output (tile grids,
    ``<row_i_col_j>`` tokens).
    """
    tok = _tokenizer(*SMOLVLM_SPECIAL, *extra_words)
    image_id = tok.convert_tokens_to_ids("<image>")
    fake, glob = tok.convert_tokens_to_ids(list(SMOLVLM_SPECIAL[:2]))
    config = SmolVLMConfig(
        text_config=_llama(tok),
        vision_config=SmolVLMVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=image_size, patch_size=patch_size,
        ),
        image_token_id=image_id, scale_factor=2, pad_token_id=tok.pad_token_id,
    )
    model = _finish(_seeded(lambda: SmolVLMForConditionalGeneration(config)), tok)
    n_tokens = (image_size // patch_size) ** 2 // 4
    block = [fake, glob] + [image_id] * n_tokens + [fake]
    return TinyVLM("smolvlm", model, tok, block, image_id, (3, image_size, image_size), _padded_images(image_size))



FAMILIES: dict[str, Callable[[], TinyVLM]] = {
    "llava_next": llava_next,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "idefics3": idefics3,
    "gemma3": gemma3,
    "internvl": internvl,
    "qwen3_vl": qwen3_vl,
    "llava_onevision": llava_onevision,
    "mistral3": mistral3,
    "smolvlm": smolvlm,
}
"""The families every check of tests/test_families.py runs on."""

PREFIX_LM_FAMILIES: dict[str, Callable[[], TinyVLM]] = {"paligemma": paligemma, "paligemma2": paligemma2}
"""Families whose own prompt mask is a bidirectional prefix (``token_type_ids == 0``), checked on their own."""

VIDEO_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision")
"""The families built with a video path (:attr:`TinyVLM.video`)."""
