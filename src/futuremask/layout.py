"""Token layout: which positions are padding, visual, supervised, and which segment they lie in (DESIGN §2).

A :class:`TokenLayout` holds ``[B, L]`` tensors for one forward pass. Everything the mask policies
need is derived from them; nothing here knows about attention kernels or transformers.

**Segments.** ``segment[j]`` grows by one at every supervised position (``valid and not prompt``)
and at the first token of every packed sequence. A query may see a key after it as "future" only
within its own segment, so no answer token and no other packed sequence is ever visible to it.
One prompt + one answer gives one prompt segment that ends at the first answer token.
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
        prompt: bool ``[B, L]``, valid positions that are not supervised (not a continuation being
            scored, not an answer token with a label); only these may be seen as "future".
        sequence: long ``[B, L]``, the packed sequence each position belongs to (0 everywhere in an
            unpacked row); default all 0.
        segment: long ``[B, L]``, the segment id (see the module docstring); default derived from
            ``prompt``, ``valid`` and ``sequence``.
    """

    valid: torch.Tensor
    modality: torch.Tensor
    prompt: torch.Tensor
    sequence: torch.Tensor | None = None
    segment: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.sequence is None:
            object.__setattr__(self, "sequence", torch.zeros_like(self.valid, dtype=torch.long))
        if self.segment is None:
            object.__setattr__(self, "segment", segments(self.valid & ~self.prompt, self.sequence))
        fields = (self.valid, self.modality, self.prompt, self.sequence, self.segment)
        shapes = {tuple(t.shape) for t in fields}
        if len(shapes) != 1 or self.valid.dim() != 2:
            raise ValueError(f"TokenLayout fields must all be [B, L]; got shapes {sorted(shapes)}")

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @property
    def supervised(self) -> torch.Tensor:
        """bool ``[B, L]``: positions that are predicted or scored (valid and not prompt)."""
        return self.valid & ~self.prompt

    @property
    def segment_end(self) -> torch.Tensor:
        """long ``[B, L]``: one past the last valid position of each position's segment (0 if it has none).

        The merge's future windows of a query row stop there (DESIGN §4, ``P_i``).
        """
        idx = torch.arange(1, self.length + 1, device=self.valid.device).expand_as(self.segment)
        last = torch.where(self.valid, idx, 0)
        table = torch.zeros(self.batch_size, self.length + 2, dtype=torch.long, device=self.valid.device)
        table = table.scatter_reduce(1, self.segment, last, reduce="amax")
        return table.gather(1, self.segment)

    def sequence_sinks(self, prefix: int = 1) -> torch.Tensor:
        """long ``[B, L, prefix]``: per position, the first ``prefix`` valid positions of its packed sequence.

        ``L`` where the sequence has fewer. In an unpacked row every position gets :meth:`sink_positions`.
        """
        batch, length = self.batch_size, self.length
        device = self.valid.device
        counts = torch.cumsum(self.valid.long(), dim=1)  # valid positions up to and including j
        starts = torch.ones_like(self.valid)
        starts[:, 1:] = self.sequence[:, 1:] != self.sequence[:, :-1]
        before = torch.where(starts, counts - self.valid.long(), 0).cummax(dim=1).values  # valid before the start
        rank = counts - before - 1  # 0-based rank of a valid position within its sequence
        table = torch.full((batch, length + 1, prefix + 1), length, dtype=torch.long, device=device)
        slot = torch.where(self.valid & (rank < prefix), rank, prefix)  # the spare slot takes the rest
        idx = torch.arange(length, device=device).expand(batch, -1)
        flat = table.view(batch, -1)
        flat.scatter_(1, self.sequence * (prefix + 1) + slot, idx)
        return table[:, :, :prefix].gather(1, self.sequence[..., None].expand(-1, -1, prefix))

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
        return TokenLayout(*(t.to(device) for t in (self.valid, self.modality, self.prompt, self.sequence, self.segment)))

    @classmethod
    def from_masks(
        cls,
        is_visual: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        modality: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> TokenLayout:
        """Layout from plain masks, as :func:`futuremask.build_mask` takes them.

        Args:
            is_visual: bool ``[L]`` or ``[B, L]``.
            attention_mask: 0/1 ``[B, L]`` (default: no padding).
            prompt_mask: bool ``[B, L]`` (default: every valid position); the valid positions outside
                it are the supervised ones.
            modality: int ``[B, L]`` (default: 1 where visual, else 0).
            position_ids: long ``[B, L]``: packed sequences, one starting wherever the position does not
                grow by one (default: one sequence per row).
        """
        is_visual = torch.as_tensor(is_visual).bool()
        batch_size = is_visual.shape[0] if is_visual.dim() == 2 else 1
        for t in (attention_mask, prompt_mask, modality, position_ids):
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
        sequence = None
        if position_ids is not None:
            sequence = packed_sequences(_check_2d("position_ids", position_ids, batch_size, length).to(device))
        return cls(valid=valid, modality=torch.where(valid, mod, 0), prompt=prompt & valid, sequence=sequence)

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
        position_ids: torch.Tensor | None = None,
    ) -> TokenLayout:
        """Layout of a model call, from its ``input_ids`` and the model config.

        Visual positions come from ``mm_token_type_ids`` when given (0 text, 1 image, 2 video), else
        from the config's ``image_token_id`` / ``video_token_id``. With both, a position is visual only if
        its id is one of the config's placeholders: some processors also mark the wrapper tokens around
        an image (Idefics3 / SmolVLM, Pixtral's ``[IMG_BREAK]`` / ``[IMG_END]``), which carry no vision
        features and stay text (DESIGN §2). The supervised positions are, in
        order of precedence: the valid positions outside ``prompt_mask``; those with a label
        (``labels != -100``; transformers' causal-LM labels are unshifted: ``labels[j]`` is the
        target of token ``j``); none. Packed sequences are read from ``position_ids`` only when
        there is no ``attention_mask``, as transformers detects them.
        """
        if mm_token_type_ids is not None:
            modality = mm_token_type_ids.long()
            placeholders = _placeholder_ids(config)
            if input_ids is not None and placeholders:
                on_placeholder = torch.isin(input_ids, torch.tensor(list(placeholders), device=input_ids.device))
                modality = torch.where(on_placeholder, modality, 0)
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
            prompt = _check_2d("labels", labels, batch_size, length) == IGNORE_INDEX
        else:
            prompt = torch.ones_like(valid)
        sequence = None
        if position_ids is not None and attention_mask is None:
            sequence = packed_sequences(_text_positions(position_ids, batch_size, length).to(device))
        return cls(valid=valid, modality=torch.where(valid, modality, 0), prompt=prompt.to(device) & valid,
                   sequence=sequence)


def segments(supervised: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
    """long ``[B, L]``: a new segment at every supervised position and at every packed-sequence start.

    Args:
        supervised: bool ``[B, L]``; sequence: long ``[B, L]`` packed-sequence ids.
    """
    starts = supervised.clone()
    starts[:, 0] = True
    starts[:, 1:] |= sequence[:, 1:] != sequence[:, :-1]
    return torch.cumsum(starts.long(), dim=1)


def packed_sequences(position_ids: torch.Tensor) -> torch.Tensor:
    """long ``[B, L]``: packed-sequence index of each position; a sequence starts where ``position_ids``
    (``[B, L]``) does not grow by exactly one (as ``transformers.masking_utils`` finds packed sequences)."""
    starts = torch.zeros_like(position_ids, dtype=torch.long)
    starts[:, 1:] = (position_ids[:, 1:] - position_ids[:, :-1] != 1).long()
    return torch.cumsum(starts, dim=1)


def _text_positions(position_ids: torch.Tensor, batch_size: int, length: int) -> torch.Tensor:
    """The text positions ``[B, L]`` of a call's ``position_ids``: ``[B, L]``, ``[1, L]``, or the multimodal
    rotary ``[3|4, B, L]`` of Qwen2-VL-style models, whose text row (the first of four) transformers reads."""
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        position_ids = position_ids[0]
    if position_ids.dim() != 2:
        raise ValueError(
            f"futuremask reads packed sequences from position_ids [B, L] when there is no attention_mask; got "
            f"shape {tuple(position_ids.shape)}. Pass attention_mask (unpacked rows) or 2-D text position_ids"
        )
    return _check_2d("position_ids", position_ids, batch_size, length)


def text_config(config: Any) -> Any:
    """The text backbone's config of a VLM config (``config.text_config``), or ``config`` itself."""
    return getattr(config, "text_config", None) or config


def _placeholder_ids(config: Any) -> dict[int, int]:
    """Placeholder token id -> modality as the config names them (``{}`` when it names none)."""
    found: dict[int, int] = {}
    for modality, names in ((IMAGE, ("image_token_id", "image_token_index")), (VIDEO, ("video_token_id", "video_token_index"))):
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value >= 0:
                found.setdefault(value, modality)
                break
    return found


def visual_token_ids(config: Any) -> dict[int, int]:
    """Map of placeholder token id -> modality, read from a model config (never hard-coded)."""
    found = _placeholder_ids(config)
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
