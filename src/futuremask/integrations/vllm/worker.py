"""The worker mixin that lets futuremask's attention backend read each request's prompt.

The attention metadata of a step says where each request's rows are and how long it is, not where its
prompt ends nor which tokens it holds. A futuremask worker checks the engine settings at start-up and
makes its model runner known to :mod:`.backend`, whose metadata builder reads the runner's input batch
(prompt lengths and token ids, by batch row) while it builds each step's metadata. Once the model is
loaded it checks that every decoder attention layer runs futuremask's backend. The platform workers
(:mod:`.cpu`, :mod:`.cuda`) are this mixin before vLLM's own worker class.
"""

from __future__ import annotations

import logging

from vllm.utils.import_utils import resolve_obj_by_qualname

from . import register
from .backend import check_layers, publish_runner
from .platforms import ServingPlatform
from .settings import Settings, check_engine

logger = logging.getLogger(__name__)


class FutureMaskWorker:
    """Mixin before a vLLM worker class; ``platform`` says which backend and settings it expects."""

    platform: ServingPlatform

    def init_device(self) -> None:
        self.futuremask = Settings.from_hf_config(self.vllm_config.model_config.hf_config)
        check_engine(self.futuremask, self.vllm_config, self.platform)
        if self.futuremask.active and self.use_v2_model_runner:
            raise ValueError(
                "futuremask serves with vLLM's V1 model runner; start the engine with "
                "VLLM_USE_V2_MODEL_RUNNER=0 in its environment"
            )
        if self.futuremask.active and not self.platform.tested:
            logger.warning(
                "futuremask policy %r on %s (%s) is experimental and untested on a GPU",
                self.futuremask.policy.name, self.platform.name, self.platform.vllm,
            )
        register()  # the backend override, even where VLLM_PLUGINS left the plugin out
        super().init_device()
        publish_runner(self.model_runner)

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        if self.futuremask.active:
            check_layers(self.vllm_config.compilation_config.static_forward_context,
                         resolve_obj_by_qualname(self.platform.backend))


def __getattr__(name: str):
    """``worker.FutureMaskCPUWorker``, the path of the previous release: kept one release, with a warning."""
    if name == "FutureMaskCPUWorker":
        import warnings

        from .cpu import FutureMaskCPUWorker

        warnings.warn(
            "futuremask.integrations.vllm.worker.FutureMaskCPUWorker moved to "
            "futuremask.integrations.vllm.cpu.FutureMaskCPUWorker; the old path goes in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return FutureMaskCPUWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
