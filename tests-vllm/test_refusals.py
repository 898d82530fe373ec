"""Settings that would split a prompt are refused at start-up; a split prompt is refused at run time.

A whole prompt computed in one pass is exact; anything else (chunked prefill, a prefix-cache hit, a
partial recompute) would run some prompt rows without their future keys, so it must not start or must
raise, never run silently causal.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ENGINE, close, make_engine
from transformers import LlavaConfig

import futuremask as fm
from futuremask.integrations.vllm import backend, engine_kwargs
from futuremask.integrations.vllm.prefill import plan_step

IMAGE = 7
CONFIG = LlavaConfig(image_token_id=IMAGE)


def step(prompt: list[int], computed: int, length: int, policy: str = "future"):
    """plan_step for one request holding ``prompt`` that computes ``length`` rows after ``computed``."""
    ids = torch.tensor([prompt + [1] * 8])
    return plan_step(fm.get_policy(policy), CONFIG, ids, torch.tensor([len(prompt)]),
                     torch.tensor([0, length]), torch.tensor([computed + length]))


PROMPT = [1, 2, IMAGE, IMAGE, IMAGE, 3, 4, 5]


def test_a_chunk_of_a_prompt_with_an_image_raises():
    with pytest.raises(fm.PromptSplitError, match="0..4 of its 8-token prompt"):
        step(PROMPT, computed=0, length=4)


def test_a_prefix_cache_hit_on_a_prompt_with_an_image_raises():
    with pytest.raises(fm.PromptSplitError, match="prefix-cache hit"):
        step(PROMPT, computed=3, length=5)


def test_a_split_without_future_pairs_is_exact_and_allowed():
    """A text-only prompt, or an image with nothing after it that future_v2t could show it."""
    assert step([1, 2, 3, 4, 5, 6], computed=2, length=4) == []
    assert step([1, 2, 3, IMAGE, IMAGE], computed=0, length=3, policy="future_v2t") == []
    with pytest.raises(fm.PromptSplitError):
        step([1, 2, 3, IMAGE, IMAGE], computed=0, length=3, policy="future_v2v")


def test_a_recompute_after_preemption_keeps_generated_tokens_out_of_the_prompt():
    passes = step(PROMPT, computed=0, length=len(PROMPT) + 3)
    assert len(passes) == 1
    layout = passes[0].layout
    assert layout.prompt[0].tolist() == [True] * len(PROMPT) + [False] * 3
    assert layout.visual[0].tolist() == [i in (2, 3, 4) for i in range(len(PROMPT) + 3)]


def test_decoding_and_text_rows_keep_the_stock_kernel():
    assert step(PROMPT, computed=len(PROMPT), length=1) == []


def test_unknown_policy_fails_before_any_engine():
    with pytest.raises(ValueError, match="unknown mask policy 'nope'"):
        engine_kwargs("nope")


@pytest.mark.parametrize("setting,message", [
    (dict(enable_chunked_prefill=True), "chunked prefill is on"),
    (dict(enable_prefix_caching=True), "prefix caching is on"),
])
def test_engine_settings_that_split_prompts_are_refused_at_start(tiny, setting, message):
    path, _ = tiny
    with pytest.raises(Exception, match=message):
        close(make_engine(path, "mma", **setting))


def test_a_policy_without_the_worker_is_refused_at_start(tiny):
    path, _ = tiny
    kwargs = {**ENGINE, **engine_kwargs("future")}
    del kwargs["worker_cls"]
    import vllm

    with pytest.raises(Exception, match="needs futuremask.s worker_cls"):
        close(vllm.LLM(model=path, **kwargs))


def test_a_runner_left_by_another_engine_is_never_used():
    """An engine without the worker must not read the prompt lengths of an earlier engine's runner."""

    class Runner:
        vllm_config = object()

    backend.publish_runner(Runner())
    with pytest.raises(ValueError, match="needs futuremask.s worker_cls"):
        backend.runner_for(object(), "future")
    assert backend.runner_for(Runner.vllm_config, "future") is backend._RUNNER[0]


@pytest.mark.parametrize("overrides,named", [
    ({"futuremask_polcy": "future"}, "'futuremask_polcy'"),
    ({"futuremask-policy": "future"}, "'futuremask-policy'"),
    ({"text_config": {"futuremask_policy": "future"}}, "'futuremask_policy' in a sub-config"),
])
def test_a_futuremask_key_the_plugin_does_not_read_is_refused_at_start(tiny, overrides, named):
    """Without the check each of these engines starts stock and serves every prompt causal."""
    path, _ = tiny
    import vllm

    with pytest.raises(Exception, match=rf"unknown futuremask key {named}.*reads only 'futuremask_policy' and "
                                        "'futuremask_merge'"):
        close(vllm.LLM(model=path, **ENGINE, hf_overrides=overrides))


def test_vllms_own_llava_class_without_torchvision_names_the_fix(tiny):
    """vLLM's native LLaVA imports torchvision (absent beside torch+cpu); vLLM alone says only that the
    architecture 'failed to be inspected', inside a pydantic ValidationError."""
    import importlib.util

    import vllm

    assert importlib.util.find_spec("torchvision") is None, "setup-vllm.sh removes torchvision on the CPU"
    path, _ = tiny
    with pytest.raises(ImportError, match=r"LlavaForConditionalGeneration imports torchvision.*"
                                          r"use model_impl='transformers' \(--model-impl transformers\)"):
        close(vllm.LLM(model=path, **{**ENGINE, "model_impl": "auto"}))
