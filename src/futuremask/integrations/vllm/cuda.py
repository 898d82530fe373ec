"""futuremask on vLLM's CUDA platform (vllm 0.33.0), experimental: ``FLASH_ATTN`` wrapped, the GPU worker.

The same mixins as on the CPU (:mod:`.backend`, :mod:`.worker`); written against vllm 0.33.0's sources
and never run on a GPU (docs/serving.md, "experimental (CUDA)").
"""

from __future__ import annotations

from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
from vllm.v1.worker.gpu_worker import Worker

from .backend import futuremask_backend
from .platforms import PLATFORMS
from .worker import FutureMaskWorker

FutureMaskFlashAttentionBackend = futuremask_backend(
    FlashAttentionBackend, "FutureMaskFlashAttentionBackend", __name__
)


class FutureMaskGPUWorker(FutureMaskWorker, Worker):
    """``worker_cls`` of a CUDA engine served under a futuremask policy (see ``engine_kwargs``)."""

    platform = PLATFORMS["cuda"]
