"""Token layout: which positions are padding, visual, and part of the prompt (DESIGN §2).

A :class:`TokenLayout` holds three ``[B, L]`` tensors for one forward pass. Everything the mask
policies need is derived from them; nothing here knows about attention kernels or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2
IGNORE_INDEX = -100
PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")
"""Processor outputs (besides input_ids / attention_mask) that hold one entry per token."""


@dataclass(frozen=True)
class TokenLayout:
    """Per-position facts of a batch of sequences.

    Attributes:
        valid: bool ``[B, L]``, False on padding.
        modality: long ``[B, L]``, 0 text, 1 image, 2 video (0 on padding).
        prompt: bool ``[B, L]``, positions a visual query may see as "future" (never a continuation
            or answer token, never padding).
    """

    valid: torch.Tensor
    modality: torch.Tensor
    prompt: torch.Tensor

    def __post_init__(self) -> None:
        shapes = {tuple(self.valid.shape), tuple(self.modality.shape), tuple(self.prompt.shape)}
        if len(shapes) != 1 or self.valid.dim() != 2:
            raise ValueError(f"TokenLayout fields must all be [B, L]; got shapes {sorted(shapes)}")

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @property
    def visual(self) -> torch.Tensor:
        """bool ``[B, L]``: image or video placeholder positions."""
        return self.modality != TEXT

    @property
    def visual_run(self) -> torch.Tensor:
        """long ``[B, L]``: an id per contiguous run of visual tokens of one modality, -1 on text."""
        mod = self.modality
        starts = torch.ones_like(self.valid)
        starts[:, 1:] = mod[:, 1:] != mod[:, :-1]
        run = torch.cumsum(starts.long(), dim=1)
        return torch.where(self.visual, run, torch.full_like(run, -1))

    @property
    def first_valid(self) -> torch.Tensor:
        """long ``[B]``: index of the first non-padding token of each row (the attention sink)."""
        return self.valid.long().argmax(dim=1)

    @property
    def prompt_end(self) -> torch.Tensor:
        """long ``[B]``: one past the last prompt position of each row (0 for a row with no prompt)."""
        idx = torch.arange(1, self.length + 1, device=self.valid.device)
        return (self.prompt.long() * idx).amax(dim=1)

    def sink_positions(self, prefix: int = 1) -> torch.Tensor:
        """long ``[B, prefix]``: the first ``prefix`` valid positions of each row (``L`` where there are fewer)."""
        idx = torch.arange(self.length, device=self.valid.device)
        key = torch.where(self.valid, idx, idx + self.length)
        first = key.topk(min(prefix, self.length), dim=1, largest=False).values
        first = torch.where(first < self.length, first, self.length)
        if prefix > self.length:
            first = torch.nn.functional.pad(first, (0, prefix - self.length), value=self.length)
        return first

    def to(self, device: torch.device | str) -> TokenLayout:
        return TokenLayout(self.valid.to(device), self.modality.to(device), self.prompt.to(device))

    @classmethod
    def from_masks(
        cls,
        is_visual: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        modality: torch.Tensor | None = None,
    ) -> TokenLayout:
        """Layout from plain masks, as :func:`futuremask.build_mask` takes them.

        Args:
            is_visual: bool ``[L]`` or ``[B, L]``.
            attention_mask: 0/1 ``[B, L]`` (default: no padding).
            prompt_mask: bool ``[B, L]`` (default: every valid position).
            modality: int ``[B, L]`` (default: 1 where visual, else 0).
        """
        is_visual = torch.as_tensor(is_visual).bool()
        batch_size = is_visual.shape[0] if is_visual.dim() == 2 else 1
        for t in (attention_mask, prompt_mask, modality):
            if t is not None:
                batch_size = max(batch_size, t.shape[0])
        if is_visual.dim() == 1:
            is_visual = is_visual.unsqueeze(0)
        if is_visual.dim() != 2:
            raise ValueError(f"is_visual must be [L] or [B, L]; got shape {tuple(is_visual.shape)}")
        is_visual = is_visual.expand(batch_size, -1)
        length = is_visual.shape[1]
        device = is_visual.device
        valid = _as_bool_2d("attention_mask", attention_mask, batch_size, length, device, default=True)
        mod = is_visual.long() if modality is None else _check_2d("modality", modality, batch_size, length).long()
        if modality is not None and not torch.equal(mod != TEXT, is_visual):
            raise ValueError("modality and is_visual disagree: modality != 0 must be exactly the visual positions")
        prompt = _as_bool_2d("prompt_mask", prompt_mask, batch_size, length, device, default=True)
        return cls(valid=valid, modality=torch.where(valid, mod, 0), prompt=prompt & valid)

    @classmethod
    def from_inputs(
        cls,
        config: Any,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> TokenLayout:
        """Layout of a model call, from its ``input_ids`` and the model config.

        Visual positions come from ``mm_token_type_ids`` when given (0 text, 1 image, 2 video), else
        from the config's ``image_token_id`` / ``video_token_id``. The prompt region is, in order of
        precedence: ``prompt_mask``; every valid position before the first supervised label
        (``labels != -100``); every valid position.
        """
        if mm_token_type_ids is not None:
            modality = mm_token_type_ids.long()
        elif input_ids is not None:
            modality = modality_from_ids(input_ids, config)
        else:
            raise ValueError(
                "futuremask needs `input_ids` (or the processor's `mm_token_type_ids`) to find the visual "
                "tokens; pass input_ids instead of only inputs_embeds"
            )
        batch_size, length = modality.shape
        device = modality.device
        valid = _as_bool_2d("attention_mask", attention_mask, batch_size, length, device, default=True)
        if prompt_mask is not None:
            prompt = _check_2d("prompt_mask", prompt_mask, batch_size, length).bool()
        elif labels is not None:
            prompt = prompt_before_labels(_check_2d("labels", labels, batch_size, length))
        else:
            prompt = torch.ones_like(valid)
        return cls(valid=valid, modality=torch.where(valid, modality, 0), prompt=prompt.to(device) & valid)


def visual_token_ids(config: Any) -> dict[int, int]:
    """Map of placeholder token id -> modality, read from a model config (never hard-coded)."""
    found: dict[int, int] = {}
    for modality, names in ((IMAGE, ("image_token_id", "image_token_index")), (VIDEO, ("video_token_id", "video_token_index"))):
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value >= 0:
                found.setdefault(value, modality)
                break
    if not found:
        raise ValueError(
            f"{type(config).__name__} has no image_token_id / video_token_id; pass the processor's "
            "mm_token_type_ids, or set config.image_token_id to the image placeholder token"
        )
    return found


def modality_from_ids(input_ids: torch.Tensor, config: Any) -> torch.Tensor:
    """long ``[B, L]`` modality of each position of ``input_ids`` ``[B, L]``."""
    modality = torch.zeros_like(input_ids, dtype=torch.long)
    for token_id, mod in visual_token_ids(config).items():
        modality[input_ids == token_id] = mod
    return modality


def prompt_before_labels(labels: torch.Tensor) -> torch.Tensor:
    """bool ``[B, L]``: True before the first supervised label (``!= -100``) of each row."""
    supervised = labels != IGNORE_INDEX
    return torch.cumsum(supervised.long(), dim=1) == 0


def _check_2d(name: str, t: torch.Tensor, batch_size: int, length: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[1] != length or t.shape[0] not in (1, batch_size):
        raise ValueError(f"{name} must be [B, L] = [{batch_size}, {length}]; got shape {tuple(t.shape)}")
    return t.expand(batch_size, -1)


def _as_bool_2d(name: str, t: torch.Tensor | None, batch_size: int, length: int, device, default: bool) -> torch.Tensor:
    if t is None:
        return torch.full((batch_size, length), default, dtype=torch.bool, device=device)
    return _check_2d(name, t, batch_size, length).to(device).bool()
