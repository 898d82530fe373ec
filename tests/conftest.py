"""Shared fixtures: a tiny random-weight LLaVA built offline, and prompts for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from futuremask.tiny import tiny_llava

torch.set_num_threads(1)


def draw_image(seed: int, size: int = 32) -> Image.Image:
    """A deterministic random RGB image."""
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def llava():
    """``(model, processor)``: tiny LLaVA, fp32, eval mode. Tests must not leave futuremask applied."""
    model, processor = tiny_llava(seed=0)
    return model, processor


@pytest.fixture(scope="session")
def prompts():
    """Named prompts: (text with <image> placeholders, number of images)."""
    return {
        "two_images": ("what is <image> the color <image> of the red circle ?", 2),
        "image_first": ("<image> which shape is left of the blue square ?", 1),
        "text_only": ("what is the color of the red circle ?", 0),
    }


def encode(processor, texts: list[str], n_images: list[int], seed: int = 0) -> dict:
    """Processor outputs for a batch (left padded)."""
    images = [draw_image(seed + 10 * i + j) for i, n in enumerate(n_images) for j in range(n)]
    kwargs = {"images": images} if images else {}
    return dict(processor(text=texts, padding=True, return_tensors="pt", **kwargs))
