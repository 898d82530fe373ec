"""SmolVLM's visual-token rule on its real processor class, built offline (docs/models.md).

transformers' default SmolVLM image-processor config (364-px tiles, 169 ``<image>`` tokens per tile) with a
word-level tokenizer holding SmolVLM's special tokens. Two stubs, both outside the image path: ``num2words``
(used for video prompts only, not installed) and the processor's class check of its video processor
(torchvision is missing, so transformers' video-processor registry is a placeholder).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from families import smolvlm
from test_families import definition_mask, dense_forward
from transformers.models.smolvlm import processing_smolvlm
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

import futuremask as fm
from futuremask.layout import TokenLayout

ROWS = [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]


@pytest.fixture(scope="module")
def processed():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(processing_smolvlm, "num2words", str)
        mp.setattr(processing_smolvlm.SmolVLMProcessor, "check_argument_for_proper_class", lambda self, name, arg: None)
        vlm = smolvlm(image_size=364, patch_size=14, extra_words=ROWS)
        vlm.tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<global-img>", *ROWS]})
        processor = processing_smolvlm.SmolVLMProcessor(
            image_processor=SmolVLMImageProcessorPil(), tokenizer=vlm.tokenizer, video_processor=SmolVLMVideoProcessor()
        )
        image = (np.random.default_rng(0).random((364, 728, 3)) * 255).astype("uint8")
        inputs = processor(text=["USER: <image> what color ?"], images=[[image]], return_tensors="pt",
                           size={"longest_edge": 728}, return_mm_token_type_ids=True)
    return vlm, inputs


def test_only_image_placeholders_are_visual(processed):
    vlm, inputs = processed
    ids = inputs["input_ids"]
    assert vlm.tokenizer.unk_token_id not in ids[0].tolist()
    assert int((ids == vlm.image_token_id).sum()) == 3 * 169  # 1x2 tiles + the global image
    wrappers = vlm.tokenizer.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>", "<row_1_col_1>",
                                                    "<row_1_col_2>"])
    assert all(int((ids == w).sum()) > 0 for w in wrappers)
    layout = TokenLayout.from_inputs(vlm.model.config, input_ids=ids)
    assert torch.equal(layout.visual, ids == vlm.image_token_id)
    assert torch.equal(inputs["mm_token_type_ids"].bool(), layout.visual)  # the processor marks the same


def test_policy_on_processor_output_matches_dense_definition(processed):
    vlm, inputs = processed
    call = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with fm.apply(vlm.model, "future_v2t"), torch.no_grad():
        got = vlm.model(**call).logits
    expected = dense_forward(vlm, call, definition_mask("future_v2t", call["input_ids"][0], vlm)).logits
    assert (got - expected).abs().max() <= 1e-5
