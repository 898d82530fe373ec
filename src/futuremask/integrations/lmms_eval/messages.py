"""lmms-eval requests -> prompt text, images and generation settings (no lmms-eval import).

lmms-eval gives chat messages as ``[{"role": ..., "content": [{"type": "image", "url": PIL | path},
{"type": "text", "text": ...}]}]`` (a task's ``doc_to_messages``, or the user turn it builds from
``doc_to_visual`` + ``doc_to_text``). They are rendered with the processor's own chat template.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ...checkpoint import has_chat_template, open_image

log = logging.getLogger(__name__)
DEFAULT_MAX_NEW_TOKENS = 1024  # lmms-eval's llava_hf default
# gen_kwargs keys handled here; any other key is reported once and ignored (tasks carry model-specific ones).
_HANDLED = ("until", "max_new_tokens", "temperature", "do_sample", "top_p", "top_k", "num_beams")
_reported: set[str] = set()


def user_turn(visuals: Sequence[Any] | None, text: str) -> list[dict]:
    """One user message: the visuals first, then the text (as lmms-eval builds it from ``doc_to_visual``)."""
    content = [{"type": "image", "url": v} for v in (visuals or [])]
    return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]


def _image(url: Any) -> Any:
    if hasattr(url, "convert"):  # a PIL image
        return url.convert("RGB")
    if isinstance(url, str):
        return open_image(url)
    raise ValueError(f"futuremask: cannot use an image given as {type(url).__name__}; give a PIL image or a path")


def render(processor: Any, messages: Sequence[dict]) -> tuple[str, list[Any]]:
    """``(prompt text, images in prompt order)``: the chat template applied, the generation prompt added.

    Raises ``ValueError`` on a video or audio part, or when the processor has no chat template.
    """
    if not has_chat_template(processor):
        raise ValueError(f"futuremask: {type(processor).__name__} has no chat template; lmms-eval chat tasks need "
                         "one (save the model's processor with its chat_template)")
    chat, images = [], []
    for message in messages:
        content = message["content"]
        parts = []
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image":
                images.append(_image(part.get("url", part.get("image"))))
                parts.append({"type": "image"})
            else:
                raise ValueError(f"futuremask: {kind!r} inputs are not supported by the lmms-eval model "
                                 "(images and text only)")
        chat.append({"role": message["role"], "content": parts})
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return text, images


def continuation_ids(tokenizer: Any, prompt: str, continuation: str) -> list[int]:
    """Token ids of ``continuation`` as it is tokenized after ``prompt`` (lm-eval's encode-the-pair rule).

    Raises ``ValueError`` when the pair's tokens do not start with the prompt's (a token spans the
    boundary), rather than scoring a different split.
    """
    whole = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if whole[: len(head)] != head or len(whole) == len(head):
        raise ValueError(f"futuremask: the continuation {continuation!r} does not tokenize apart from the prompt "
                         f"ending {prompt[-40:]!r}; cannot score it")
    return whole[len(head):]


def generation(gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(keyword arguments for model.generate, stop strings)`` from a task's ``gen_kwargs``.

    Sampling iff ``temperature > 0`` (then ``top_p`` / ``top_k`` apply); otherwise greedy, as lmms-eval's
    own models do. ``max_new_tokens`` defaults to 1024; ``until`` is a string or a list of strings.
    """
    for key in sorted(set(gen_kwargs) - set(_HANDLED) - _reported):
        log.warning("futuremask: gen_kwargs %s=%r is not used", key, gen_kwargs[key])
        _reported.add(key)
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else [u for u in until if u]
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        "num_beams": int(gen_kwargs.get("num_beams") or 1),
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        kwargs["temperature"] = temperature
        kwargs.update({k: gen_kwargs[k] for k in ("top_p", "top_k") if gen_kwargs.get(k) is not None})
    return kwargs, until


def cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to (not including) the first occurrence of any stop string."""
    ends = [i for i in (text.find(u) for u in until) if i >= 0]
    return text[: min(ends)] if ends else text


__all__ = ["continuation_ids", "cut", "generation", "render", "user_turn"]
