"""A data collator for supervised fine-tuning of a VLM: chat-templated prompt + answer, labels on the answer.

An *example* is a mapping with

* ``prompt``: the chat-templated prompt text, generation prompt included, one image token per image
  (as :func:`futuremask.eval.prompts.build_prompt` makes it), **or** ``content``: the user turn as chat
  content parts in order, ``{"type": "image"}`` / ``{"type": "text", "text": ...}``;
* ``images``: the PIL images, in prompt order;
* ``answer``: the assistant's reply (a string).

:class:`SFTCollator` renders the prompt with the processor's chat template and the generation prompt,
renders the answer as the template writes an assistant turn, and returns a batch whose labels are
-100 on the prompt and on padding, and a ``prompt_mask`` (True on the prompt). Under
``futuremask.apply(model, policy)`` the model call takes the prompt region from ``prompt_mask`` (or,
when a trainer drops it, from the labels): the policy's extra visibility never reaches the answer,
even in a forward without labels.
Image tensors of all rows are concatenated in row order, as LLaVA-style models consume them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..layout import IGNORE_INDEX, PER_TOKEN_KEYS

PADDING_SIDES = ("left", "right")
_TOKEN_KEYS = ("input_ids", "attention_mask", "labels")


class SFTCollator:
    """Batch VLM examples for training: ``input_ids``, ``attention_mask``, ``labels``, image tensors.

    Args:
        processor: a transformers processor with a chat template (e.g. ``LlavaProcessor``).
        padding_side: ``"right"`` (usual for training) or ``"left"``.
        max_length: longest allowed row in tokens (prompt + answer); a longer one is an error that
            names it (truncate the context first, e.g. with the MileBench prompt budget).
        add_eos: end every answer with the tokenizer's EOS token (unless the template already does),
            so the model learns to stop.

    Calling it on a list of examples (raw, or already passed through :meth:`encode`) returns a dict
    of tensors: ``input_ids``, ``attention_mask`` long ``[B, L]``; ``labels`` long ``[B, L]`` (-100 on
    prompt and padding); ``prompt_mask`` bool ``[B, L]`` (True on the valid prompt positions);
    ``pixel_values`` float ``[N_images, 3, H, W]`` (all rows' images in row order)
    and any other per-image tensors the processor returns, concatenated the same way.
    """

    def __init__(
        self,
        processor: Any,
        *,
        padding_side: str = "right",
        max_length: int | None = None,
        add_eos: bool = True,
    ) -> None:
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}; got {padding_side!r}")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to the EOS token) first")
        self.padding_side = padding_side
        self.max_length = max_length
        self.add_eos = add_eos

    # --- one example ----------------------------------------------------------------------------

    def prompt_text(self, content: Sequence[Mapping[str, Any]]) -> str:
        """The chat-templated user turn followed by the assistant's generation prompt."""
        messages = [{"role": "user", "content": list(content)}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def answer_text(self, answer: str, content: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The text the chat template writes after the generation prompt for an assistant turn ``answer``.

        ``content`` is the user turn it follows (a one-word probe turn when None).
        """
        content = [{"type": "text", "text": "question"}] if content is None else content
        prompt = self.prompt_text(content)
        messages = [
            {"role": "user", "content": list(content)},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        full = self.processor.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "the chat template does not render a conversation as (generation prompt + assistant turn); "
                "SFTCollator cannot split prompt and answer for this processor"
            )
        return full[len(prompt):]

    def encode(self, example: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One example -> ``input_ids``, ``labels`` long ``[L]`` and the processor's image tensors.

        The prompt goes through the processor (which expands each image placeholder into its visual
        tokens; special tokens are added unless the templated prompt already starts with BOS, as the
        evaluation runner does); the answer is tokenized on its own and appended, so the split is exact.
        """
        if "input_ids" in example:
            return dict(example)
        if "answer" not in example or ("prompt" not in example and "content" not in example):
            raise KeyError("an SFT example needs 'prompt' (or 'content'), 'images' and 'answer'; got keys "
                           f"{sorted(example)}")
        images = list(example.get("images") or [])
        content = example.get("content")
        if content is not None:
            n_slots = sum(1 for part in content if part.get("type") == "image")
            if n_slots != len(images):
                raise ValueError(f"the example has {n_slots} image parts but {len(images)} images")
        prompt = example["prompt"] if "prompt" in example else self.prompt_text(content)
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = not (bos and prompt.startswith(bos))  # as the evaluation runner: a BOS exactly once
        enc = self.processor(text=[prompt], images=images or None, return_tensors="pt",
                             add_special_tokens=add_special)
        prompt_ids = enc["input_ids"][0]
        answer_ids = self.tokenizer(self.answer_text(example["answer"], content), add_special_tokens=False)
        answer_ids = list(answer_ids["input_ids"])
        eos = self.tokenizer.eos_token_id
        if self.add_eos and eos is not None and (not answer_ids or answer_ids[-1] != eos):
            answer_ids.append(eos)
        if not answer_ids:
            raise ValueError("the answer is empty after tokenization: there is nothing to supervise")
        answer = torch.tensor(answer_ids, dtype=torch.long)
        row = {
            "input_ids": torch.cat([prompt_ids, answer]),
            "labels": torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer]),
        }
        if self.max_length is not None and row["input_ids"].numel() > self.max_length:
            raise ValueError(
                f"an example has {row['input_ids'].numel()} tokens (prompt {prompt_ids.numel()} + answer "
                f"{answer.numel()}), more than max_length={self.max_length}; shorten its context or raise max_length"
            )
        for key, value in enc.items():
            if key in PER_TOKEN_KEYS:
                row[key] = torch.nn.functional.pad(value[0], (0, answer.numel()), value=0)
            elif key not in _TOKEN_KEYS and isinstance(value, torch.Tensor):
                row[key] = value
        return row

    # --- a batch --------------------------------------------------------------------------------

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("SFTCollator got an empty batch")
        rows = [self.encode(ex) for ex in examples]
        width = max(r["input_ids"].numel() for r in rows)
        batch: dict[str, torch.Tensor] = {
            "input_ids": self._pad([r["input_ids"] for r in rows], width, self.tokenizer.pad_token_id),
            "attention_mask": self._pad([torch.ones_like(r["input_ids"]) for r in rows], width, 0),
            "labels": self._pad([r["labels"] for r in rows], width, IGNORE_INDEX),
        }
        for key in PER_TOKEN_KEYS:
            if any(key in r for r in rows):
                batch[key] = self._pad([r.get(key, torch.zeros_like(r["input_ids"])) for r in rows], width, 0)
        image_keys = sorted({k for r in rows for k in r} - set(batch) - set(PER_TOKEN_KEYS))
        for key in image_keys:
            parts = [r[key] for r in rows if key in r]
            batch[key] = torch.cat(parts, dim=0)
        return add_prompt_mask(batch)

    def _pad(self, seqs: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
        out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype)
        for i, s in enumerate(seqs):
            if self.padding_side == "right":
                out[i, : s.numel()] = s
            else:
                out[i, width - s.numel():] = s
        return out


class PromptMaskCollator:
    """Wrap any data collator whose batches carry ``labels`` so they also carry ``prompt_mask``.

    For trainers that call the model without ``labels`` (TRL with ``label_smoothing_factor > 0`` or a
    ``compute_loss_func``; log-prob passes): the policy then still knows where the answer is.

    Args:
        collator: a callable ``examples -> dict`` with ``labels`` long ``[B, L]`` (and ``attention_mask``).

    Returns (when called): the batch plus ``prompt_mask`` bool ``[B, L]`` = valid and ``labels == -100``.
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        return add_prompt_mask(self.collator(examples))


def add_prompt_mask(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with ``prompt_mask`` bool ``[B, L]`` = valid (``attention_mask``, if any) and ``labels == -100``."""
    if "labels" not in batch:
        raise KeyError("a prompt_mask is derived from `labels` (-100 on the prompt); this batch has none")
    valid = batch.get("attention_mask")
    prompt = batch["labels"] == IGNORE_INDEX
    batch["prompt_mask"] = prompt if valid is None else prompt & valid.bool()
    return batch


__all__ = ["SFTCollator", "PromptMaskCollator", "PADDING_SIDES"]
