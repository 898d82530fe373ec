"""continuation_logprob of a padded batch equals each sample scored alone, for left and right padding."""

from __future__ import annotations

import pytest
import torch
from conftest import draw_image

import futuremask as fm


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("policy,merge", [(p, None) for p in fm.POLICIES] + [("future", "kernel")])
def test_batched_equals_each_alone(llava, side, policy, merge):
    model, processor = llava
    texts = ["<image> what is the color of the red circle ?", "<image> which ?"]  # different lengths
    images = [draw_image(1), draw_image(2)]
    conts = [[9, 12], [14, 14, 8]]
    tokenizer = processor.tokenizer
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        batch = dict(processor(text=texts, images=images, padding=True, return_tensors="pt"))
    finally:
        tokenizer.padding_side = before
    pads = batch["attention_mask"] == 0
    assert pads.any() and bool(pads[:, -1 if side == "right" else 0].any())  # really padded on that side
    got = fm.continuation_logprob(model, batch, conts, policy=policy, merge=merge)
    alone = [fm.continuation_logprob(model, dict(processor(text=[t], images=[im], return_tensors="pt")), [c],
                                     policy=policy, merge=merge)[0] for t, im, c in zip(texts, images, conts, strict=True)]
    torch.testing.assert_close(got, torch.stack(alone), rtol=0, atol=1e-4)


def test_left_aligned_moves_right_padding_left():
    inputs = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    out = fm.hf.left_aligned(inputs)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
