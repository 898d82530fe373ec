"""The sizes the benchmark takes (the synthetic model, the synthetic prompt), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticSize:
    """Shape of the synthetic model's Llama backbone (``intermediate=None``: ``8/3 * hidden``, rounded)."""

    hidden: int = 768
    layers: int = 8
    heads: int = 12
    kv_heads: int = 12
    intermediate: int | None = None
    vocab: int = 32000
    max_positions: int = 16384

    def intermediate_size(self) -> int:
        return self.intermediate or 64 * round(self.hidden * 8 / 3 / 64)


@dataclass(frozen=True)
class PromptShape:
    """A synthetic prompt: ``images`` runs of ``tokens_per_image`` placeholders among ``text_tokens`` texts.

    The text is split into ``images + 1`` near-equal segments (``text, image, text, ..., image, text``),
    so text follows every image, as in a question after the pictures. The first text id is BOS.
    """

    images: int = 2
    tokens_per_image: int = 576
    text_tokens: int = 1152
    batch: int = 1

    @property
    def length(self) -> int:
        return self.images * self.tokens_per_image + self.text_tokens
