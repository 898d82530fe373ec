"""Mask policies (DESIGN §3): each one is a tiny pure predicate over a :class:`TokenLayout`.

A policy is the causal mask OR an *overlay*: the extra pairs ``(i, j)`` it lets through. Every
overlay is written in the FlexAttention ``mask_mod`` style, ``overlay(layout, b, q, kv) -> bool``,
with index tensors that broadcast, so the same function fills a dense boolean mask
(:func:`dense_mask`) and a FlexAttention ``BlockMask``. The full rule is

    allowed(i, j) = valid[j] and ((j <= i and sequence[i] == sequence[j])
                                  or (j > i and segment[i] == segment[j] and overlay(i, j)))

The segment condition (DESIGN §2) is applied once, by :func:`overlay_mod`, to every policy: an
overlay only says which pairs of one segment it lets through.

Pictures (``V`` visual, ``T`` text, ``■`` allowed) for the layout ``T V V T``::

    causal      future      future_v2v  future_v2t  mma
    ■ ⬚ ⬚ ⬚     ■ ⬚ ⬚ ⬚     ■ ⬚ ⬚ ⬚     ■ ⬚ ⬚ ⬚     ■ ■ ■ ⬚
    ■ ■ ⬚ ⬚     ■ ■ ■ ■     ■ ■ ■ ⬚     ■ ■ ⬚ ■     ■ ■ ⬚ ■
    ■ ■ ■ ⬚     ■ ■ ■ ■     ■ ■ ■ ⬚     ■ ■ ■ ■     ■ ■ ■ ■
    ■ ■ ■ ■     ■ ■ ■ ■     ■ ■ ■ ■     ■ ■ ■ ■     ■ ■ ■ ■
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry is torch-free at import, so the CLI lists policies without loading torch
    import torch

    from .layout import TokenLayout

Overlay = Callable[["TokenLayout", "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
MaskMod = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Policy:
    """A named mask policy: the causal mask plus an optional overlay of extra allowed pairs."""

    name: str
    overlay: Overlay | None
    description: str

    @property
    def is_causal(self) -> bool:
        return self.overlay is None


_REGISTRY: dict[str, Policy] = {}
_ALIASES: dict[str, str] = {}


def register_policy(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[Overlay | None], Overlay | None]:
    """Decorator adding an overlay to the registry under ``name`` (and ``aliases``)."""

    def add(overlay: Overlay | None) -> Overlay | None:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"policy name {key!r} is already registered; choose another name")
        lines = (overlay.__doc__ or "").strip().splitlines() if overlay is not None else ["j <= i"]
        if not lines:
            raise ValueError(
                f"policy {name!r}: {getattr(overlay, '__name__', overlay)!r} has no docstring; give it one whose "
                "first line says which extra pairs it allows (`futuremask policies` prints it)"
            )
        _REGISTRY[name] = Policy(name=name, overlay=overlay, description=lines[0])
        for alias in aliases:
            _ALIASES[alias] = name
        return overlay

    return add


def get_policy(name: str | Policy) -> Policy:
    """The policy registered as ``name`` (an alias such as ``original`` works too)."""
    if isinstance(name, Policy):
        return name
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        known = ", ".join(list(_REGISTRY) + list(_ALIASES))
        raise ValueError(f"unknown mask policy {name!r}; choose one of: {known}")
    return _REGISTRY[key]


# --- the policies --------------------------------------------------------------------------------

register_policy("causal", aliases=("original",))(None)


@register_policy("future")
def future(lay: TokenLayout, b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """M^f: visual queries see every prompt position."""
    return lay.visual[b, q] & lay.prompt[b, kv]


@register_policy("future_v2v")
def future_v2v(lay: TokenLayout, b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """M^v2v: visual queries see the visual tokens of the whole prompt."""
    return lay.visual[b, q] & lay.visual[b, kv] & lay.prompt[b, kv]


@register_policy("future_v2t", aliases=("aki",))
def future_v2t(lay: TokenLayout, b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """M^v2t: visual queries see the text tokens of the whole prompt."""
    return lay.visual[b, q] & ~lay.visual[b, kv] & lay.prompt[b, kv]


@register_policy("mma")
def mma(lay: TokenLayout, b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Modality-mutual: prompt tokens see prompt tokens of another modality, in any order."""
    return (lay.modality[b, q] != lay.modality[b, kv]) & lay.prompt[b, q] & lay.prompt[b, kv]


@register_policy("image_bidirectional")
def image_bidirectional(lay: TokenLayout, b: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Tokens of one contiguous image (or video) run see each other both ways, as Gemma3 is trained."""
    run = lay.visual_run
    return (run[b, q] == run[b, kv]) & (run[b, q] >= 0) & lay.prompt[b, kv]


def policy_names() -> tuple[str, ...]:
    """The registered policy names, in registration order (built-in ones first)."""
    return tuple(_REGISTRY)


def accepted_names() -> list[str]:
    """Every string a user may type for a policy: the names, then the aliases."""
    return [*_REGISTRY, *_ALIASES]


def __getattr__(name: str):
    if name == "POLICIES":  # computed on access, so policies registered later are listed too
        return policy_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def policy_aliases() -> dict[str, str]:
    """Alias -> policy name (e.g. ``original`` -> ``causal``)."""
    return dict(_ALIASES)


# --- composing masks ------------------------------------------------------------------------------


def and_masks(*mods: MaskMod) -> MaskMod:
    """Intersection of ``mask_mod`` functions."""

    def mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out & m(b, h, q, kv)
        return out

    return mod


def or_masks(*mods: MaskMod) -> MaskMod:
    """Union of ``mask_mod`` functions."""

    def mod(b, h, q, kv):
        out = mods[0](b, h, q, kv)
        for m in mods[1:]:
            out = out | m(b, h, q, kv)
        return out

    return mod


def overlay_mod(policy: str | Policy, layout: TokenLayout) -> MaskMod | None:
    """The policy's extra future pairs bound to ``layout`` as a ``mask_mod`` (None for ``causal``).

    ``overlay(i, j) and j > i and segment[i] == segment[j]``: a key is future only within the query's
    segment (no supervised token and no packed-sequence start in ``i+1 .. j``).
    """
    overlay = get_policy(policy).overlay
    if overlay is None:
        return None
    segment = layout.segment
    return lambda b, h, q, kv: overlay(layout, b, q, kv) & (kv > q) & (segment[b, q] == segment[b, kv])


def causal_layout_mod(layout: TokenLayout) -> MaskMod:
    """``j <= i`` within one packed sequence: the model's own causal mask of ``layout`` (before padding)."""
    sequence = layout.sequence
    return lambda b, h, q, kv: (kv <= q) & (sequence[b, q] == sequence[b, kv])


def allowed_mod(policy: str | Policy, layout: TokenLayout) -> MaskMod:
    """``mask_mod`` of the full rule ``valid[j] and (causal(i, j) or future overlay(i, j))``."""
    valid = layout.valid
    base: MaskMod = causal_layout_mod(layout)
    extra = overlay_mod(policy, layout)
    if extra is not None:
        base = or_masks(base, extra)
    return and_masks(lambda b, h, q, kv: valid[b, kv], base)


DENSE_CHUNK = 2**24  # grid cells evaluated at once by dense_mask


def dense_mask(mod: MaskMod, batch_size: int, q_length: int, kv_length: int, device=None) -> torch.Tensor:
    """Evaluate a ``mask_mod`` on the full grid by broadcasting: bool ``[B, q_length, kv_length]``.

    Large grids are filled a block of query rows at a time, so the temporaries of ``mod`` stay at
    about :data:`DENSE_CHUNK` cells whatever ``L``; the result is the only full-size tensor.
    """
    import torch

    b = torch.arange(batch_size, device=device)[:, None, None]
    h = torch.zeros((), dtype=torch.long, device=device)
    q = torch.arange(q_length, device=device)[None, :, None]
    kv = torch.arange(kv_length, device=device)[None, None, :]
    if batch_size * q_length * kv_length <= DENSE_CHUNK:
        return mod(b, h, q, kv).expand(batch_size, q_length, kv_length)
    out = torch.empty(batch_size, q_length, kv_length, dtype=torch.bool, device=device)
    rows = max(1, DENSE_CHUNK // (batch_size * kv_length))
    for start in range(0, q_length, rows):
        stop = min(start + rows, q_length)
        out[:, start:stop] = mod(b, h, q[:, start:stop], kv)
    return out


def policy_mask(policy: str | Policy, layout: TokenLayout) -> torch.Tensor:
    """bool ``[B, L, L]``: True where query ``i`` may attend key ``j`` under ``policy``."""
    return dense_mask(allowed_mod(policy, layout), layout.batch_size, layout.length, layout.length, layout.valid.device)


def build_mask(
    policy: str,
    is_visual: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
    modality: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention mask of a policy: bool ``[B, L, L]``, True = query ``i`` may attend key ``j``.

    Args:
        policy: a name from :data:`futuremask.POLICIES` (or an alias such as ``original``).
        is_visual: bool ``[L]`` or ``[B, L]``.
        attention_mask: 0/1 ``[B, L]``, 0 on padding.
        prompt_mask: bool ``[B, L]``, True on the prompt (default: all valid); the valid positions
            outside it are supervised and start a new segment each (DESIGN §2).
        modality: int ``[B, L]``, 0 text / 1 image / 2 video (default: 1 where visual).
        position_ids: long ``[B, L]``, packed sequences restarting their positions (default: one
            sequence per row); no key of another sequence is ever allowed.

    Example:
        >>> build_mask("future_v2v", torch.tensor([0, 1, 1, 0], dtype=torch.bool))[0].int()
        tensor([[1, 0, 0, 0],
                [1, 1, 1, 0],
                [1, 1, 1, 0],
                [1, 1, 1, 1]], dtype=torch.int32)
    """
    from .layout import TokenLayout

    layout = TokenLayout.from_masks(
        is_visual, attention_mask=attention_mask, prompt_mask=prompt_mask, modality=modality,
        position_ids=position_ids,
    )
    return policy_mask(policy, layout)
