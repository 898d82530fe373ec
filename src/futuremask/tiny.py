"""A tiny LLaVA-architecture VLM built locally (no download): word-level tokenizer, small CLIP tower.

Used by the offline demo, the tests and (through :func:`llava_config` and :func:`random_model`) the
benchmark's synthetic model of any size. Everything is built from
a fixed seed, so two calls with the same arguments give the same weights.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
IMAGE_TOKEN = "<image>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }} "  # the space the parts get too
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }} {% endif %}"
    "{% endfor %}{% endif %}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
BASE_WORDS = (
    "USER: ASSISTANT: USER ASSISTANT : ? . , ! ' \" ( ) - + = / # "
    "a an the is are was of in on to and or not what which who where how many much color shape "
    "image images picture frame first second third last next previous before after between "
    "answer question choice list your yes no "
    "red green blue yellow orange purple black white gray pink brown "
    "circle square triangle star cross diamond left right up down top bottom middle center "
    "A B C D E F G H "
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"
).split()


def tiny_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``SPECIAL + words`` (``BASE_WORDS`` by default)."""
    vocab: dict[str, int] = {}
    for word in SPECIAL + list(BASE_WORDS if words is None else words):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    hf.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    hf.padding_side = "left"
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_llava(
    words: list[str] | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden_size: int = 32,
    max_positions: int = 4096,
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random-weight LLaVA model and its processor; ``(image_size / patch_size) ** 2`` tokens per image."""
    tokenizer = tiny_tokenizer(words)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    config = llava_config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_kv_heads, max_positions=max_positions,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        vision_hidden_size=vision_hidden_size, image_size=image_size, patch_size=patch_size,
    )
    model = random_model(config, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def llava_config(
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    max_positions: int,
    image_token_id: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    vision_hidden_size: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
) -> LlavaConfig:
    """A LLaVA config: a Llama text backbone of the given size and a one-layer CLIP vision tower."""
    return LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_positions,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=vision_hidden_size * 2,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        image_token_id=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=pad_token_id,
    )


def random_model(config: LlavaConfig, seed: int = 0) -> LlavaForConditionalGeneration:
    """The model of ``config`` with random weights drawn from ``seed`` (the global RNG is left as it was), in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlavaForConditionalGeneration(config).eval()
