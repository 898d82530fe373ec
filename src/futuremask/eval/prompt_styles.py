"""Prompt styles: how a MileBench sample becomes model inputs and an answer (a registry, ``--prompt-style``).

* ``chat`` (default): the MileBench prompt wrapped in the processor's own chat template, tokenized by the
  processor in one piece, left-padded batches (:mod:`futuremask.eval.prompts`).
* ``milebench``: the official LLaVA worker of MileBench, the protocol of the published numbers
  (:mod:`futuremask.eval.milebench_style`): its template, chunked token ids, padded images, one sample
  per ``generate`` call, stop at the separator.

A style turns a sample into a :class:`~futuremask.eval.prompts.Prompt` (``build``), a prompt into the
exact inputs the model receives (``encode``: what ``--dry-run`` writes), and a batch of prompts into
answers (``generate``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteriaList

from ..checkpoint import left_padding
from . import milebench_style as mb
from .data import DataError, Sample
from .prompts import IMAGE_SLOT, Prompt, build_prompt, image_token_text, raw_context, truncate


@dataclass(frozen=True)
class PromptSettings:
    """What a style needs besides the sample: the truncation budget and the image handling."""

    max_context_len: int
    tokens_per_image: int
    image_aspect: str = "processor"  # milebench: "pad" or "processor" (resolved, see milebench_style.image_aspect)
    combine_images: int | None = None  # milebench: the dataset's combined mode


@dataclass(frozen=True)
class PromptStyle:
    """A named way to prompt: ``build`` a sample, ``encode`` one prompt, ``generate`` answers for a batch."""

    name: str
    description: str
    build: Callable[[Sample, object, PromptSettings], Prompt]
    encode: Callable[[object, Prompt, PromptSettings], dict]
    generate: Callable[[object, object, Sequence[Prompt], dict, PromptSettings], list[str]]
    one_sample_per_call: bool = False


def load_images(paths: Sequence[str]) -> list:
    """The images at ``paths`` as RGB PIL images, files closed.

    Raises:
        DataError: a file that cannot be decoded (named, with the fix).
    """
    from PIL import Image

    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            raise DataError(f"image {p} cannot be decoded ({type(err).__name__}: {err}); replace the file "
                            "and run the same command again (finished batches are kept)") from err
    return images


def to_model(model, inputs: dict) -> dict:
    """Tensors of ``inputs`` on the model's device; floating ones in its dtype."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
            for k, v in inputs.items()}


# --- chat --------------------------------------------------------------------------------------------


def processor_batch(processor, texts: Sequence[str], images: Sequence[Sequence]) -> dict:
    """The processor's inputs for a left-padded batch of prompt texts (CPU tensors).

    Args:
        texts: one prompt text per row (chat template applied, images as the processor's image token).
        images: one list of PIL images per row, in prompt order (empty lists for text-only rows).

    Returns:
        ``input_ids [B, L]``, ``attention_mask [B, L]``, pixels, ... (special tokens are added unless every
        text already starts with BOS, so the BOS is never doubled).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    texts, images = list(texts), [list(i) for i in images]
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and all(t.startswith(bos) for t in texts))
    kwargs = dict(text=texts, padding=True, return_tensors="pt", add_special_tokens=add_special)
    if any(images):
        kwargs["images"] = images
    with left_padding(processor):
        return processor(**kwargs)


def batch_inputs(model, processor, texts: Sequence[str], images: Sequence[Sequence]) -> dict:
    """:func:`processor_batch` on the model's device, floating tensors in its dtype."""
    return to_model(model, processor_batch(processor, texts, images))


def chat_inputs(processor, prompts: Sequence[Prompt]) -> dict:
    """The processor's inputs for a left-padded batch of chat prompts (their images loaded)."""
    return processor_batch(processor, [p.text for p in prompts], [load_images(p.image_paths) for p in prompts])


def _chat_build(sample: Sample, processor, settings: PromptSettings) -> Prompt:
    if settings.combine_images:
        raise ValueError("--combine-images is MileBench's combined mode; use it with --prompt-style milebench")
    return build_prompt(sample, processor, settings.max_context_len, settings.tokens_per_image)


@torch.no_grad()
def _chat_generate(model, processor, prompts: Sequence[Prompt], gen_kwargs: dict, settings: PromptSettings):
    inputs = to_model(model, chat_inputs(processor, prompts))
    out = model.generate(**inputs, **gen_kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]


# --- milebench (the official LLaVA worker) -------------------------------------------------------------


def _milebench_build(sample: Sample, processor, settings: PromptSettings) -> Prompt:
    tokenizer = getattr(processor, "tokenizer", processor)
    if settings.combine_images:
        question = mb.combined_question(sample, tokenizer, settings.max_context_len, settings.tokens_per_image)
        images = list(sample.image_paths)
    else:
        question, images = truncate(sample.instruction, raw_context(sample), sample.image_paths, tokenizer,
                                    settings.max_context_len, settings.tokens_per_image)
    if question.count(IMAGE_SLOT) != len(images):
        raise ValueError(f"{sample.task} sample {sample.sample_id!r}: {question.count(IMAGE_SLOT)} image slot(s) "
                         f"for {len(images)} image(s); does the text contain {IMAGE_SLOT!r} itself?")
    text = mb.worker_text(question, image_token_text(processor))
    return Prompt(sample=sample, question=question, text=text, image_paths=images)


def _milebench_encode(processor, prompt: Prompt, settings: PromptSettings) -> dict:
    tokenizer = getattr(processor, "tokenizer", processor)
    image_ids, tensors = mb.image_inputs(processor, load_images(prompt.image_paths), settings.image_aspect)
    ids = mb.chunked_input_ids(prompt.text, tokenizer, image_token_text(processor), image_ids)
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            **tensors}


@torch.no_grad()
def _milebench_generate(model, processor, prompts: Sequence[Prompt], gen_kwargs: dict, settings: PromptSettings):
    if settings is None:
        raise ValueError("the milebench style needs its PromptSettings (the image aspect among them)")
    tokenizer = getattr(processor, "tokenizer", processor)
    answers = []
    for prompt in prompts:  # one sample per generate call, as the worker
        inputs = to_model(model, _milebench_encode(processor, prompt, settings))
        length = inputs["input_ids"].shape[1]
        stop = mb.StopAtSeparator(mb.LLAVA_LLAMA_2_SEPARATOR, tokenizer, length)
        with mb.autocast_like_worker(inputs["input_ids"].device):
            out = model.generate(**inputs, **gen_kwargs, stopping_criteria=StoppingCriteriaList([stop]))
        answers.append(tokenizer.decode(out[0, length:], skip_special_tokens=True).strip())
    return answers


STYLES: dict[str, PromptStyle] = {
    "chat": PromptStyle("chat", "the processor's chat template, batched", _chat_build,
                        lambda processor, prompt, settings: chat_inputs(processor, [prompt]), _chat_generate),
    "milebench": PromptStyle("milebench", "MileBench's official LLaVA worker (llava_llama_2, chunked ids, pad)",
                             _milebench_build, _milebench_encode, _milebench_generate, one_sample_per_call=True),
}


def get_style(name: str) -> PromptStyle:
    """The prompt style called ``name``."""
    if name not in STYLES:
        raise ValueError(f"unknown prompt style {name!r}; choose one of: {', '.join(STYLES)}")
    return STYLES[name]


__all__ = ["STYLES", "PromptSettings", "PromptStyle", "batch_inputs", "chat_inputs", "get_style", "load_images", "processor_batch", "to_model"]
