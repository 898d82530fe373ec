"""Fixtures of the vLLM suite: a tiny LLaVA saved where vLLM loads it, and engines over it.

vLLM must be installed (scripts/setup-vllm.sh): importing it here makes the suite fail, not skip,
when it is missing. Engines run in this process (no engine-core subprocess).
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import vllm  # noqa: E402,F401  (fail, never skip, without vLLM)
from PIL import Image  # noqa: E402

from futuremask.integrations.vllm import engine_kwargs  # noqa: E402
from futuremask.tiny import tiny_llava  # noqa: E402

MAX_LEN = 256
ENGINE = dict(
    dtype="float32", max_model_len=MAX_LEN, max_num_seqs=4, enforce_eager=True, seed=0,
    kv_cache_memory_bytes=2**26,
    # vLLM's own LLaVA class imports torchvision (through transformers' Pixtral processor), which has no
    # build for torch 2.13.0+cpu on PyPI; the Transformers backend runs the same model without it.
    model_impl="transformers",
)


def draw_image(seed: int, size: int = 32) -> Image.Image:
    """A deterministic random RGB image."""
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``(model, processor, path)``: a random tiny LLaVA (head_dim 32, as vLLM's CPU kernel needs), saved.

    vLLM's Transformers backend patches transformers' model classes when an engine starts, so any
    Hugging Face reference must be computed before the first engine (see test_parity's ``references``).
    """
    model, processor = tiny_llava(hidden_size=128, num_heads=4, num_kv_heads=2, vision_hidden_size=64, seed=1)
    path = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor, str(path)


def make_engine(path: str, policy: str, merge=None, **overrides) -> vllm.LLM:
    """An engine over ``path`` with futuremask's settings for ``policy`` (``overrides`` win)."""
    kwargs = {**ENGINE, **engine_kwargs(policy, merge), **overrides}
    return vllm.LLM(model=path, **kwargs)


def close(llm) -> None:
    """Free an engine before the next one starts."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    torch.set_num_threads(max(1, torch.get_num_threads()))
