"""The ``--model_args`` of the lmms-eval model, checked before any weight is loaded (no lmms-eval import).

``pretrained=ID_OR_PATH,policy=NAME,merge=none|kernel|lse,batch_size=N,dtype=...,device=...,backend=...``
plus the merge's settings ``merge_kernel=K,merge_pool=max|mean,merge_prefix=P`` and a per-layer schedule
``layers=0-15`` (lmms-eval cuts ``--model_args`` at commas, so several ranges are joined with ``+``:
``layers=0-7+12``). Policy aliases
(``original``, ``aki``, ...) are accepted; an unknown key or value is a ``ValueError`` naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...checkpoint import DTYPES
from ...hf import BACKENDS
from ...layers import normalize_layers
from ...merge import Merge
from ...policies import get_policy

KEYS = ("pretrained", "policy", "merge", "merge_kernel", "merge_pool", "merge_prefix", "layers", "batch_size",
        "dtype", "device", "backend")
_MERGE_SETTINGS = {"merge_kernel": "kernel", "merge_pool": "pool", "merge_prefix": "prefix"}
# lmms-eval passes these from its own command line (--batch_size, --device, --max_batch_size).
_CLI_DEFAULTS = {"batch_size": (None, 1, "1"), "device": (None,), "max_batch_size": (None,)}


@dataclass(frozen=True)
class ModelArgs:
    """Validated model arguments; ``policy`` is the canonical name, ``merge`` a :class:`Merge` or None."""

    pretrained: str
    policy: str = "causal"
    merge: Merge | None = None
    batch_size: int = 1
    dtype: str = "float32"
    device: str | None = None
    backend: str = "auto"
    layers: str | None = None  # a schedule in fm.apply's syntax ("0-7,12"), None for every layer


def split(arg_string: str) -> dict[str, str]:
    """``--model_args`` text -> ``{key: value}``, every value kept as the text given (lmms-eval's own parser
    turns ``-1`` into ``-1.0``); a part without ``=`` is refused with the fix (commas separate arguments)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in arg_string.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"futuremask: model_args part {part!r} is not key=value: commas separate model_args, "
                             "so join several layer ranges with + (layers=0-7+12)")
        out[key.strip()] = value.strip()
    return out


def combine(model_args: dict[str, Any], cli: dict[str, Any]) -> dict[str, Any]:
    """``--model_args`` with lmms-eval's own ``--batch_size`` / ``--device`` folded in.

    A value given both ways must agree (lmms-eval's ``--batch_size`` defaults to 1, so 1 never conflicts);
    ``max_batch_size`` (for ``--batch_size auto``) is refused, as is ``auto`` itself.
    """
    merged = dict(model_args)
    for key, value in cli.items():
        if value in _CLI_DEFAULTS.get(key, (None,)):
            continue
        if key == "max_batch_size" or str(value).startswith("auto"):
            raise ValueError("futuremask: --batch_size auto is not supported; give a number (--batch_size N)")
        if key in merged and str(merged[key]) != str(value):
            raise ValueError(f"futuremask: {key} is {merged[key]} in --model_args but {value!r} on the command "
                             f"line; give it once")
        merged[key] = value
    return merged


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"futuremask: {key} must be an integer >= 1; got {value!r}")
    return int(value)


def _merge(kind: Any, settings: dict[str, Any]) -> Merge | None:
    kind = "none" if kind is None else str(kind)
    if kind == "none":
        if settings:
            raise ValueError(f"futuremask: {', '.join(sorted(settings))} need a merge (merge=kernel or merge=lse)")
        return None
    values = {_MERGE_SETTINGS[k]: (v if k == "merge_pool" else _positive_int(k, v)) for k, v in settings.items()}
    try:
        return Merge(kind=kind, **values)
    except ValueError as err:
        raise ValueError(f"futuremask: {err} (merge=none|kernel|lse)") from err


def _layers(value: Any) -> str | None:
    """``layers=`` in fm.apply's syntax (``+`` joins ranges, as commas cannot); None when not given."""
    if value is None:
        return None
    text = str(value).replace("+", ",")
    try:
        return normalize_layers(text)
    except ValueError as err:
        raise ValueError(f"futuremask: {err}; in --model_args join several ranges with + (layers=0-7+12)") from err


def parse(kwargs: dict[str, Any]) -> ModelArgs:
    """Check the model arguments (after :func:`combine`) and return them; raises ``ValueError``."""
    unknown = sorted(set(kwargs) - set(KEYS))
    if unknown:
        raise ValueError(f"futuremask: unknown model_args {', '.join(unknown)}; the keys are: {', '.join(KEYS)}")
    if not kwargs.get("pretrained"):
        raise ValueError("futuremask: model_args needs pretrained=ID_OR_PATH (a Hugging Face VLM checkpoint)")
    try:
        policy = get_policy(str(kwargs.get("policy", "causal"))).name
    except ValueError as err:
        raise ValueError(f"futuremask: {err}") from err
    dtype = str(kwargs.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise ValueError(f"futuremask: unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    backend = str(kwargs.get("backend", "auto"))
    if backend not in BACKENDS:
        raise ValueError(f"futuremask: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    layers = _layers(kwargs.get("layers"))
    if policy == "causal" and layers is not None:
        raise ValueError(f"futuremask: layers={kwargs['layers']} with policy=causal does nothing (causal opens no "
                         "layer); name a policy (policy=future, ...) or drop layers=")
    settings = {k: v for k, v in kwargs.items() if k in _MERGE_SETTINGS}
    device = kwargs.get("device")
    return ModelArgs(
        pretrained=str(kwargs["pretrained"]),
        policy=policy,
        merge=_merge(kwargs.get("merge"), settings),
        batch_size=_positive_int("batch_size", kwargs.get("batch_size", 1)),
        dtype=dtype,
        device=None if device is None else str(device),
        backend=backend,
        layers=layers,
    )


__all__ = ["KEYS", "ModelArgs", "combine", "parse", "split"]
