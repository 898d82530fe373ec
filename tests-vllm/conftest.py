"""Fixtures of the vLLM suite: a tiny LLaVA saved where vLLM loads it, and engines over it.

vLLM must be installed (scripts/setup-vllm.sh): importing it here makes the suite fail, not skip,
when it is missing. Engines run in this process (no engine-core subprocess).
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402
import vllm  # noqa: E402,F401  (fail, never skip, without vLLM)
from cases import all_references  # noqa: E402

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


def save_tiny(path) -> dict:
    """Save a random tiny LLaVA (head_dim 32, as vLLM's CPU kernel needs) and its processor at ``path``;
    return the Hugging Face results of every case (cases.all_references), computed before any engine starts."""
    model, processor = tiny_llava(hidden_size=128, num_heads=4, num_kv_heads=2, vision_hidden_size=64, seed=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return all_references(model, processor)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``(path, references)`` of :func:`save_tiny`."""
    path = tmp_path_factory.mktemp("tiny-llava")
    return str(path), save_tiny(path)


def make_engine(path: str, policy: str, merge=None, **overrides) -> vllm.LLM:
    """An engine over ``path`` with futuremask's settings for ``policy`` (``overrides`` win)."""
    kwargs = {**ENGINE, **engine_kwargs(policy, merge), **overrides}
    return vllm.LLM(model=path, **kwargs)


def close(llm) -> None:
    """Free an engine before the next one starts."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
