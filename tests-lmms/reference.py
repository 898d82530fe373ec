"""The independent computation the lmms-eval outputs are checked against: the checkpoint loaded with plain
transformers, each document alone, its prompt built with the processor's chat template, then
``fm.apply`` + ``generate`` or ``fm.continuation_logprob``."""

from __future__ import annotations

from functools import lru_cache

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

import futuremask as fm


@lru_cache(maxsize=4)
def load(path: str):
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def inputs(processor, doc: dict, interleaved: bool) -> dict:
    """One document's prompt: labelled, interleaved images (the chat task's ``doc_to_messages``) or the
    images first, then the question (the simple model's one user turn)."""
    images = [Image.open(p).convert("RGB") for p in doc["images"]]
    content: list[dict] = []
    for k in range(len(images)):
        content += [{"type": "text", "text": f"image {k + 1} :"}] if interleaved else []
        content.append({"type": "image"})
    content.append({"type": "text", "text": doc["question"]})
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    return processor(images=images, text=[text], return_tensors="pt")


def schedule(layers: str | None) -> str | None:
    """A ``layers=`` model argument (ranges joined with ``+``) in fm.apply's syntax."""
    return None if layers is None else layers.replace("+", ",")


def raw_answer(path: str, policy: str, merge: str, doc: dict, interleaved: bool, max_new_tokens: int,
               layers: str | None = None) -> str:
    """Greedy answer under ``policy`` / ``merge`` (on the ``layers`` given as a model argument), before any stop
    string is applied."""
    model, processor = load(path)
    batch = inputs(processor, doc, interleaved)
    with fm.apply(model, policy, merge=merge, layers=schedule(layers)), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0]


def cut(text: str, until: list[str]) -> str:
    for stop in until:
        if stop in text:
            text = text[: text.index(stop)]
    return text


def choice_scores(path: str, policy: str, merge: str, doc: dict, choices: list[str],
                  layers: str | None = None) -> list[tuple[float, bool]]:
    """``(log p(" choice" | prompt), whether greedy decoding says it)`` per one-word choice."""
    model, processor = load(path)
    batch = inputs(processor, doc, interleaved=False)
    ids = [processor.tokenizer.convert_tokens_to_ids(c) for c in choices]
    with fm.apply(model, policy, merge=merge, layers=schedule(layers)), torch.no_grad():
        first = model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1].item()
    return [(fm.continuation_logprob(model, batch, [[i]], policy=policy, merge=merge, layers=schedule(layers)).item(),
             i == first) for i in ids]
