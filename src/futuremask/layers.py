"""Per-layer schedules: which text decoder layers a policy applies to (causal on the others).

A schedule is given as ``None`` or ``"all"`` (every layer), a ``range``, an iterable of layer indices,
a string such as ``"0-15"`` or ``"0-7,12,14-15"`` (the CLI's ``--layers``), or a callable
``f(layer_index) -> bool``. :func:`resolve_layers` turns it into the set of indices, or ``None`` when it
covers every layer, so a schedule over all layers *is* the plain policy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

LayerSpec = str | range | Iterable[int] | Callable[[int], bool] | None


def parse_layers(text: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]`` (inclusive ranges, comma separated)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = (int(x) for x in part.split("-", 1))
                if last < first:
                    raise ValueError
                out += range(first, last + 1)
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(
                f"layers {text!r}: expected indices and inclusive ranges such as '0-15' or '0-7,12'"
            ) from None
    return out


def resolve_layers(spec: LayerSpec, num_layers: int) -> frozenset[int] | None:
    """The layer indices of ``spec`` in ``0 .. num_layers - 1``; ``None`` when they are all of them.

    Raises:
        ValueError: an index outside the model, or a schedule that selects no layer.
    """
    if spec is None or (isinstance(spec, str) and spec.strip() == "all"):
        return None
    if isinstance(spec, str):
        chosen = parse_layers(spec)
    elif callable(spec):
        chosen = [i for i in range(num_layers) if spec(i)]
    else:
        chosen = [int(i) for i in spec]
    outside = sorted({i for i in chosen if not 0 <= i < num_layers})
    if outside:
        raise ValueError(f"layers {outside} do not exist: the text model has layers 0-{num_layers - 1}")
    if not chosen:
        raise ValueError("the layer schedule selects no layer; use policy 'causal' for a causal model")
    layers = frozenset(chosen)
    return None if len(layers) == num_layers else layers


def check_layers(model, spec: LayerSpec) -> None:
    """Refuse a schedule naming layers that ``model``'s text decoder does not have (``ValueError``), before
    any work starts; ``model`` is a transformers model (its config is read, nothing runs)."""
    from .layout import text_config

    resolve_layers(spec, int(text_config(model.config).num_hidden_layers))


def normalize_layers(text: str | None) -> str | None:
    """A schedule string in its compact form (``"3,0-2"`` -> ``"0-3"``); None for ``None`` or ``"all"``.

    Needs no model: run folders are named from it before a model is loaded.
    """
    if text is None or text.strip() == "all":
        return None
    return describe_layers(parse_layers(text))


def describe_layers(layers: Iterable[int] | None) -> str:
    """Compact text of a resolved schedule: ``{0, 1, 2, 5}`` -> ``"0-2,5"``; ``None`` -> ``"all"``."""
    if layers is None:
        return "all"
    parts, ordered = [], sorted(layers)
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


__all__ = ["LayerSpec", "check_layers", "describe_layers", "normalize_layers", "parse_layers", "resolve_layers"]
