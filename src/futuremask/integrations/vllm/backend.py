"""futuremask's vLLM attention backend: any stock backend, plus the policy on whole-prompt passes.

:func:`futuremask_backend` wraps a stock backend (``CPU_ATTN`` in :mod:`.cpu`, ``FLASH_ATTN`` in
:mod:`.cuda`): its metadata builder also plans each step's prompt passes (:func:`.prefill.plan_step`,
from the model runner's input batch), and its implementation runs the stock kernel on every row of
the step (it also serves decoding, which stays causal), then recomputes the rows of each request whose
whole prompt is in the step and has future pairs, from the step's fresh keys and values, with the
policy's mask (:func:`.prefill.attend`). With no policy, or ``causal``, nothing differs from the stock
backend. The same two mixins run on every platform; only the stock classes differ.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.config import get_current_vllm_config
from vllm.v1.attention.backend import AttentionType

from .prefill import attend, plan_step, window_size
from .settings import Settings

_RUNNER: list[Any] = []  # the model runner of the last futuremask worker of this process


def publish_runner(runner: Any) -> None:
    """Called by :class:`~.worker.FutureMaskWorker` once its model runner exists."""
    _RUNNER[:] = [runner]


def runner_for(vllm_config: Any, policy: str) -> Any:
    """The model runner of the engine of ``vllm_config``; never one left by another engine of the process."""
    if not _RUNNER or _RUNNER[0].vllm_config is not vllm_config:
        raise ValueError(
            f"futuremask policy {policy!r} needs futuremask's worker_cls (it tells the attention backend "
            "where each prompt ends); start the engine with futuremask.integrations.vllm.engine_kwargs(policy)"
        )
    return _RUNNER[0]


class FutureMaskMetadataBuilder:
    """Mixin before a stock builder: adds ``futuremask_prompts`` (list of :class:`~.prefill.PromptRows`).

    It reads only what every platform's V1 runner has: ``CommonAttentionMetadata.query_start_loc_cpu``,
    ``seq_lens`` and ``num_reqs``, and the runner's ``input_batch.token_ids_cpu_tensor`` /
    ``num_prompt_tokens_cpu_tensor``, whose rows are the step's requests in order.
    """

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
                common_attn_metadata.query_start_loc_cpu[: rows + 1],
                common_attn_metadata.seq_lens[:rows].cpu(),  # on CUDA a device sync, once per step and group
                device=self.device,
            )
        metadata.futuremask_prompts = prompts
        return metadata


class FutureMaskImpl:
    """Mixin before a stock implementation: its forward, then the policy's rows of each whole-prompt pass."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.futuremask = Settings.from_hf_config(get_current_vllm_config().model_config.hf_config)
        if self.futuremask.active and self.attn_type == AttentionType.DECODER:
            unsupported = [
                name for name, present in (
                    ("ALiBi", self.alibi_slopes is not None),
                    ("attention sinks", getattr(self, "sinks", None) is not None),
                    ("logit soft-capping", bool(getattr(self, "logits_soft_cap", 0))),
                    ("KV sharing across layers (no fresh keys)", self.kv_sharing_target_layer_name is not None),
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
                scale=self.scale, window=window_size(self.sliding_window),
            ).to(rows.dtype)
        return output


def futuremask_backend(stock: type, name: str, module: str) -> type:
    """futuremask's backend over the stock backend class ``stock`` (the stock one when no policy is set).

    Args:
        stock: a vLLM ``AttentionBackend`` subclass (its ``get_impl_cls`` / ``get_builder_cls``).
        name, module: where the result is bound (vLLM imports the backend by ``module.name``).

    Returns:
        A subclass of ``stock`` whose implementation is ``FutureMaskImpl`` + the stock one and whose
        builder is ``FutureMaskMetadataBuilder`` + the stock one; ``futuremask_stock`` is ``stock``.
    """
    impl = type(f"{name}Impl", (FutureMaskImpl, stock.get_impl_cls()), {"__module__": module})
    builder = type(f"{name}MetadataBuilder", (FutureMaskMetadataBuilder, stock.get_builder_cls()),
                   {"__module__": module})
    return type(name, (stock,), {
        "__module__": module,
        "__qualname__": name,
        "__doc__": f"{stock.__name__} with futuremask's policy on whole-prompt passes (see futuremask_backend).",
        "futuremask_stock": stock,
        "get_impl_cls": staticmethod(lambda: impl),
        "get_builder_cls": staticmethod(lambda: builder),
    })


def check_layers(static_forward_context: dict[str, Any], backend: type) -> None:
    """Refuse an engine whose decoder attention layers do not run ``backend``'s implementation.

    vLLM chooses each layer's backend itself (model kind, dtype, head size, ``attention_backend``); a
    layer on any other backend would serve the policy's prompts causal without a word.

    Args:
        static_forward_context: ``vllm_config.compilation_config.static_forward_context`` (layer name ->
            layer), filled while the model loads.
    """
    impl = backend.get_impl_cls()
    others = sorted(
        f"{layer_name} ({type(layer.impl).__name__})"
        for layer_name, layer in static_forward_context.items()
        if getattr(layer, "attn_type", None) == AttentionType.DECODER and hasattr(layer, "impl")
        and not isinstance(layer.impl, impl)
    )
    if others:
        raise ValueError(
            f"futuremask's policy needs every decoder attention layer on {backend.__name__}, but "
            f"{len(others)} run another backend: {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}. "
            "This model (or these settings) cannot be served under a futuremask policy here"
        )
