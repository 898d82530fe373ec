"""Reading the demo benchmark back from disk: a task's JSON, an image's pixels, the nearest palette colour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from futuremask.eval.demo import COLORS


def read_task(root: Path, name: str) -> dict:
    """The MileBench-format JSON of task ``name`` under ``root``."""
    return json.loads((root / name / f"{name}.json").read_text())


def pixels(root: Path, task: str, name: str) -> np.ndarray:
    """Image ``name`` of ``task`` as int ``[32, 32, 3]`` RGB (asserting the demo's size and mode)."""
    with Image.open(root / task / "images" / name) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
        return np.asarray(im).astype(int)


def nearest_color(rgb) -> str:
    """The demo colour name closest (squared RGB distance) to ``rgb``."""
    return min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], rgb, strict=True)))
