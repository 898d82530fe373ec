"""What an engine asked for (``hf_overrides``) and the engine settings a policy needs; no vLLM import.

A policy is chosen per engine by two keys of the model config, set with ``hf_overrides`` (``LLM(...)``)
or ``--hf-overrides`` (``vllm serve``): ``futuremask_policy`` (a policy name or alias) and, optionally,
``futuremask_merge`` (a kind name such as ``"lse"``, or a dict of :class:`futuremask.Merge` fields).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from transformers import PretrainedConfig

from ...layout import visual_token_ids
from ...merge import Merge
from ...policies import Policy, get_policy
from .platforms import ServingPlatform

POLICY_KEY = "futuremask_policy"
MERGE_KEY = "futuremask_merge"
KEYS = (POLICY_KEY, MERGE_KEY)


def _ours(key: str) -> bool:
    """A key meant for futuremask: it starts with ``futuremask`` in any case (``futuremask-policy`` too)."""
    return key.lower().startswith("futuremask")


def check_keys(keys: Iterable[str], nested: Iterable[str] = ()) -> None:
    """Refuse a futuremask key the plugin does not read: it would leave the engine stock without a word.

    Args:
        keys: the top-level keys of ``hf_overrides`` (or of the overridden model config).
        nested: keys of its sub-configs (``text_config``, ...), where no futuremask key is read.

    Raises:
        ValueError: naming the unknown keys and the known ones.
    """
    unknown = sorted(k for k in keys if _ours(k) and k not in KEYS)
    inner = sorted(k for k in nested if _ours(k))
    if unknown or inner:
        found = ", ".join([repr(k) for k in unknown] + [f"{k!r} in a sub-config" for k in inner])
        raise ValueError(
            f"unknown futuremask key {found} in the model config (hf_overrides / --hf-overrides); futuremask "
            f"reads only {POLICY_KEY!r} and {MERGE_KEY!r}, at the top level of hf_overrides"
        )


@dataclass(frozen=True)
class Settings:
    """The policy and merge of one engine, read from its model config."""

    policy: Policy
    merge: Merge | None

    @property
    def active(self) -> bool:
        """False when nothing differs from the stock engine (no policy, or ``causal`` without merge)."""
        return not (self.policy.is_causal and self.merge is None)

    @classmethod
    def from_hf_config(cls, hf_config: Any) -> Settings:
        """Read ``futuremask_policy`` / ``futuremask_merge`` from a (vLLM-overridden) HF config.

        Raises:
            ValueError: any other ``futuremask*`` key, at the top level or in a sub-config (:func:`check_keys`);
                an unknown policy or merge; a policy on a config without visual token ids.
        """
        attributes = vars(hf_config)
        check_keys(attributes, [k for v in attributes.values() if isinstance(v, PretrainedConfig) for k in vars(v)])
        merge = _merge(getattr(hf_config, MERGE_KEY, None))
        policy = get_policy(getattr(hf_config, POLICY_KEY, None) or "causal")
        settings = cls(policy=policy, merge=merge)
        if settings.active:
            visual_token_ids(hf_config)  # fail at start-up, with a clear message, if visual tokens cannot be found
        return settings


def _merge(value: Any) -> Merge | None:
    if isinstance(value, dict):
        try:
            return Merge(**value)
        except TypeError as e:
            raise ValueError(f"{MERGE_KEY}={value!r}: {e}; the keys are those of futuremask.Merge") from e
    if value is None or isinstance(value, str):
        return Merge.coerce(value)
    raise ValueError(f"{MERGE_KEY} must be a kind name ('kernel', 'lse', 'none') or a dict; got {value!r}")


def check_engine(settings: Settings, vllm_config: Any, platform: ServingPlatform) -> None:
    """Refuse, at start-up, engine settings that would split a prompt, change its keys or skip the recompute.

    Chunked prefill and prefix caching feed a prompt in several passes; the policy needs the whole
    prompt in one pass (DESIGN §3). A quantized KV cache would make the recomputed prompt rows read
    other keys than the decoding steps; context parallelism shards them. Prompt embeddings carry no
    token ids to find the visual positions in. Where the platform needs eager mode (CUDA graphs would replay a
    step without the recompute), compiled or graph mode is refused.
    """
    if not settings.active:
        return
    scheduler, cache = vllm_config.scheduler_config, vllm_config.cache_config
    problems = []
    if platform.engine.get("enforce_eager") and not vllm_config.model_config.enforce_eager:
        problems.append(f"on {platform.name} the engine must run eagerly (enforce_eager=True / --enforce-eager)")
    if scheduler.enable_chunked_prefill:
        problems.append("chunked prefill is on (enable_chunked_prefill=False / --no-enable-chunked-prefill)")
    if getattr(scheduler, "long_prefill_token_threshold", 0):
        problems.append("long_prefill_token_threshold cuts long prompts (set it to 0)")
    if cache.enable_prefix_caching:
        problems.append("prefix caching is on (enable_prefix_caching=False / --no-enable-prefix-caching)")
    if cache.cache_dtype != "auto":
        problems.append(f"kv_cache_dtype={cache.cache_dtype!r} (use 'auto')")
    if getattr(vllm_config.model_config, "enable_prompt_embeds", False):
        problems.append("prompt embeddings are on: their token ids cannot say which positions are visual")
    parallel = getattr(vllm_config, "parallel_config", None)
    for size in ("decode_context_parallel_size", "prefill_context_parallel_size"):
        if getattr(parallel, size, 1) > 1:
            problems.append(f"{size}={getattr(parallel, size)} shards a prompt's keys across ranks (use 1)")
    if problems:
        raise ValueError(
            f"futuremask policy {settings.policy.name!r} needs the whole prompt in one pass, computed by its "
            "backend, but " + "; ".join(problems)
            + ". futuremask.integrations.vllm.engine_kwargs(policy) gives the settings."
        )


def engine_kwargs(
    policy: str,
    platform: ServingPlatform | None,
    merge: Merge | str | None = None,
    hf_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` (and ``EngineArgs``) that serve ``policy`` exactly on ``platform``.

    Args:
        policy: a name from :data:`futuremask.POLICIES` (aliases work).
        platform: where the engine runs (:data:`.platforms.PLATFORMS`); None only for the stock engine.
        merge: a :class:`futuremask.Merge`, a kind name (``"kernel"``, ``"lse"``) or None.
        hf_overrides: other config overrides of yours, merged with the futuremask keys (a ``futuremask*``
            key among them other than these two is refused).

    Returns:
        ``hf_overrides`` with the futuremask keys and, unless the engine is the stock one (``causal``
        without merge), ``worker_cls`` (the platform's worker, which tells the attention backend each
        request's prompt), ``enable_chunked_prefill=False``, ``enable_prefix_caching=False`` and the
        platform's own settings (``platform.engine``).

    Example:
        >>> from futuremask.integrations.vllm.platforms import PLATFORMS
        >>> sorted(engine_kwargs("future_v2v", PLATFORMS["cpu"]))
        ['enable_chunked_prefill', 'enable_prefix_caching', 'hf_overrides', 'worker_cls']
    """
    settings = Settings(policy=get_policy(policy), merge=Merge.coerce(merge))
    overrides = dict(hf_overrides or {})
    check_keys(overrides)
    overrides[POLICY_KEY] = settings.policy.name
    if settings.merge is not None:
        overrides[MERGE_KEY] = asdict(settings.merge)
    kwargs: dict[str, Any] = {"hf_overrides": overrides}
    if settings.active:
        if platform is None:
            raise ValueError(f"futuremask policy {settings.policy.name!r} needs a platform to serve on")
        kwargs.update(worker_cls=platform.worker, enable_chunked_prefill=False, enable_prefix_caching=False,
                      **platform.engine)
    return kwargs
