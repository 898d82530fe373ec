"""``fm.apply`` refuses, in one line naming the family, layouts it cannot serve (docs/models.md)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Kosmos2Config,
    Kosmos2ForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
    OpenAIGPTConfig,
    OpenAIGPTLMHeadModel,
)

import futuremask as fm
from futuremask import hf_families


def tiny_mllama() -> MllamaForConditionalGeneration:
    """A 2-layer Mllama whose second text layer cross-attends to the image; its config names an image token."""
    config = MllamaConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, cross_attention_layers=[1], pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_global_layers=1,
                           attention_heads=2, image_size=16, patch_size=8, vision_output_dim=32,
                           intermediate_layers_indices=[0], max_num_tiles=1, supported_aspect_ratios=[[1, 1]]),
        image_token_index=5,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MllamaForConditionalGeneration(config).eval()


def tiny_kosmos2() -> Kosmos2ForConditionalGeneration:
    """Kosmos-2: image features in the sequence, but its text model builds its own masks (not masking_utils)."""
    config = Kosmos2Config(
        text_config=dict(vocab_size=64, embed_dim=32, layers=1, attention_heads=2, ffn_dim=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        latent_query_num=4,
    )
    return Kosmos2ForConditionalGeneration(config).eval()


@pytest.mark.parametrize("policy", ["causal", "future"])
def test_mllama_cross_attention_is_refused_by_name(policy):
    model = tiny_mllama()
    impl = model.config.get_text_config()._attn_implementation
    with pytest.raises(ValueError, match=r"^futuremask does not support mllama \(MllamaForConditionalGeneration\): "
                                         r"a cross-attention VLM") as err:
        fm.apply(model, policy)
    assert "\n" not in str(err.value)
    assert getattr(model, "_futuremask", None) is None  # nothing was switched before the refusal
    assert model.config.get_text_config()._attn_implementation == impl


def test_cross_attention_layers_are_refused_without_the_table(monkeypatch):
    """A cross-attention family missing from :data:`UNSUPPORTED` is still found from its config."""
    monkeypatch.setattr(hf_families, "UNSUPPORTED", {})
    with pytest.raises(ValueError, match=r"mllama .*cross-attention layers to the image"):
        fm.apply(tiny_mllama(), "future")


@pytest.mark.parametrize("make, family", [
    (tiny_kosmos2, r"kosmos-2 \(Kosmos2ForConditionalGeneration\)"),
    (lambda: OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=32)),
     r"openai-gpt \(OpenAIGPTLMHeadModel\)"),
])
def test_masks_outside_masking_utils_are_refused(make, family):
    model = make()
    model.config.image_token_id = 5  # a placeholder is named, so only the mask path can rule the model out
    with pytest.raises(ValueError, match=rf"does not support {family}: none of its modules builds its attention "
                                         r"masks through transformers\.masking_utils"):
        fm.apply(model, "future")
