"""A vLLM CPU worker that lets the futuremask attention backend read each request's prompt.

The attention metadata of a step says where each request's rows are and how long it is, not where its
prompt ends nor which tokens it holds. This worker checks the engine settings at start-up and makes
its model runner known to :mod:`.backend`, whose metadata builder reads the runner's input batch
(prompt lengths and token ids, by batch row) while it builds each step's metadata.
"""

from __future__ import annotations

from vllm.v1.worker.cpu_worker import CPUWorker

from . import register
from .backend import publish_runner
from .settings import Settings, check_engine


class FutureMaskCPUWorker(CPUWorker):
    """``worker_cls`` of an engine served under a futuremask policy (see ``engine_kwargs``)."""

    def init_device(self) -> None:
        settings = Settings.from_hf_config(self.vllm_config.model_config.hf_config)
        check_engine(settings, self.vllm_config)
        if settings.active and self.use_v2_model_runner:
            raise ValueError(
                "futuremask serves with vLLM's V1 model runner; unset VLLM_USE_V2_MODEL_RUNNER"
            )
        register()  # the backend override, even where VLLM_PLUGINS left the plugin out
        super().init_device()
        publish_runner(self.model_runner)
