"""The official MileBench generation protocol: what its LLaVA worker feeds the model (facts, our code).

MileBench's ``generate.py`` builds the prompt of :mod:`futuremask.eval.prompts` (``MileBenchDataset``),
then its LLaVA worker (``workers/model_workers.py``):

1. turns every ``<ImageHere><ImageHere>`` into ``<ImageHere>\\n<ImageHere>\\n`` (``str.replace``: non-overlapping,
   left to right), then every ``<ImageHere>`` into the model's image token;
2. wraps the prompt in LLaVA's ``llava_llama_2`` conversation (:func:`llava_llama_2`);
3. tokenizes it chunk by chunk (LLaVA's ``tokenizer_image_token``, :func:`chunked_input_ids`): each text
   chunk between image tokens with the tokenizer's special tokens, BOS kept once at the start;
4. preprocesses the images as LLaVA's ``process_images`` with the checkpoint's ``image_aspect_ratio``
   (``pad``: :func:`expand_to_square` with the processor's mean colour, then the processor);
5. generates one sample per call, greedy, ``min_new_tokens=1``, stopping at the template's separator
   (:class:`StopAtSeparator`), under bf16 autocast on CUDA, and decodes with special tokens skipped, stripped.

``--combine-images N`` is the dataset's combined mode (:func:`combined_question`). In this module
"image token" is the model's own (``processor.image_token``); the ids one image becomes come from the
processor (:func:`image_inputs`), never from a constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from transformers import StoppingCriteria

from ..layout import PER_TOKEN_KEYS
from ..names import IMAGE_ASPECTS
from .data import Sample
from .prompts import IMAGE_SLOT, choice_suffix, image_token_text, truncate

LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
LLAVA_LLAMA_2_SEPARATOR = "<s>"  # the template's ``sep``; the worker's stop string (sep_style is not TWO)


def separate_adjacent_images(question: str) -> str:
    """The worker's CLEVR-Change rule: each ``<ImageHere><ImageHere>`` pair, left to right, gets newlines."""
    return question.replace(IMAGE_SLOT + IMAGE_SLOT, f"{IMAGE_SLOT}\n{IMAGE_SLOT}\n")


def llava_llama_2(user: str, system: str = LLAVA_LLAMA_2_SYSTEM) -> str:
    """LLaVA's ``llava_llama_2`` prompt for one user turn and an open assistant turn."""
    return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"


def worker_text(question: str, image_token: str) -> str:
    """The string the worker tokenizes: adjacent images separated, slots as ``image_token``, templated."""
    return llava_llama_2(separate_adjacent_images(question).replace(IMAGE_SLOT, image_token))


def combined_question(sample: Sample, tokenizer, max_context_len: int, tokens_per_image: int) -> str:
    """The dataset's combined-images prompt: ``<ImageHere>`` per combined image, a newline, the instruction,
    a newline and the left-truncated context whose placeholders read ``<Image k> ``.

    The official code asserts one combined image per sample (and stops otherwise); with k > 1 combined
    images this puts one slot per image, so that every image has its slot.
    """
    context = sample.context
    if sample.choice_list is not None:
        context += choice_suffix(sample.choice_list, sample.task)
    for k in range(1, len(sample.raw.get("task_instance", {}).get("images_path", [])) + 1):
        context = context.replace(f"{{image#{k}}}", f"<Image {k}> ").replace(f"{{table#{k}}}", f"<Image {k}> ")
    question, _ = truncate(sample.instruction, context, [], tokenizer, max_context_len, tokens_per_image)
    return IMAGE_SLOT * len(sample.image_paths) + "\n" + question


def chunked_input_ids(text: str, tokenizer, image_token: str, image_ids: Sequence[Sequence[int]]) -> list[int]:
    """LLaVA's ``tokenizer_image_token`` with each image expanded as the model needs.

    Args:
        text: the templated prompt, one ``image_token`` per image.
        tokenizer: the model's tokenizer; every chunk is tokenized alone, special tokens included.
        image_token: the image token string that splits ``text``.
        image_ids: for each image in order, the ids it becomes (from :func:`image_inputs`).

    Returns:
        ids: the first chunk's BOS (when the tokenizer adds one) once, then every chunk without its first
        token in that case, the k-th image's ids between chunks k-1 and k.
    """
    chunks = [tokenizer(chunk)["input_ids"] for chunk in text.split(image_token)]
    if len(chunks) - 1 != len(image_ids):
        raise ValueError(f"the prompt has {len(chunks) - 1} image token(s) {image_token!r} for {len(image_ids)} "
                         "image(s); a sample's text contains the image token itself?")
    bos = getattr(tokenizer, "bos_token_id", None)
    offset = 1 if chunks[0] and bos is not None and chunks[0][0] == bos else 0
    ids = chunks[0][:offset]
    for k, chunk in enumerate(chunks):
        if k:
            ids.extend(image_ids[k - 1])
        ids.extend(chunk[offset:])
    return ids


def expand_to_square(image, background: tuple[int, ...]):
    """LLaVA's ``expand2square``: pad the shorter side, the image centred (offset rounded down)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out


def image_aspect(model_config, requested: str | None) -> str:
    """``pad`` or ``processor``: ``requested`` if given, else the checkpoint config's ``image_aspect_ratio``.

    Raises:
        ValueError: nothing requested and the config names no aspect (HF conversions such as llava-hf drop
            it), or names one LLaVA handles another way (``anyres``).
    """
    if requested is not None:
        if requested not in IMAGE_ASPECTS:
            raise ValueError(f"--image-aspect must be one of {IMAGE_ASPECTS}, got {requested!r}")
        return requested
    value = getattr(model_config, "image_aspect_ratio", None)
    if value is None:
        raise ValueError("the checkpoint's config has no image_aspect_ratio; pass --image-aspect pad (what "
                         "LLaVA-1.5's own checkpoints say, so the published runs) or --image-aspect processor")
    if value == "anyres":
        raise ValueError("image_aspect_ratio 'anyres' (LLaVA-NeXT's tiling) is not reproduced; pass "
                         "--image-aspect pad or processor")
    return "pad" if value == "pad" else "processor"


def _mean_colour(processor) -> tuple[int, ...]:
    mean = getattr(getattr(processor, "image_processor", processor), "image_mean", None)
    if mean is None:
        raise ValueError(f"{type(processor).__name__} has no image_mean to pad with; pass --image-aspect processor")
    return tuple(int(x * 255) for x in mean)


def image_inputs(processor, images: Sequence, aspect: str) -> tuple[list[list[int]], dict]:
    """The ids each image becomes in the prompt and the processor's image tensors, one image at a time.

    Each image (padded to a square first with ``aspect="pad"``) goes through the processor with the text
    ``image_token`` alone, so its expansion (e.g. 576 image tokens for LLaVA-1.5) is the processor's own.

    Returns:
        ``(ids, tensors)``: ``ids[k]`` the ids of image k; ``tensors`` the non-text outputs (``pixel_values``,
        ``image_sizes``, ...) of all images concatenated along dim 0.
    """
    token = image_token_text(processor)
    ids: list[list[int]] = []
    parts: dict[str, list] = {}
    for image in images:
        if aspect == "pad":
            image = expand_to_square(image, _mean_colour(processor))
        out = processor(text=[token], images=[image], add_special_tokens=False, return_tensors="pt")
        ids.append(out["input_ids"][0].tolist())
        for key, value in out.items():
            if key not in ("input_ids", "attention_mask", *PER_TOKEN_KEYS):
                parts.setdefault(key, []).append(value)
    return ids, {k: torch.cat(v, dim=0) if torch.is_tensor(v[0]) else v for k, v in parts.items()}


class StopAtSeparator(StoppingCriteria):
    """LLaVA's ``KeywordsStoppingCriteria`` for one keyword, as the worker meets it (its ``generate`` returns
    only the new tokens, the criterion's start length is the prompt's).

    With ``new`` the generated tokens, ``P`` the prompt length and ``K`` the keyword's length in ids
    (tokenized with special tokens, a leading BOS dropped): stop when ``new`` ends with the keyword's ids,
    or when ``decode(new[-min(len(new) - P, K):])`` (Python slicing, special tokens skipped) contains the
    keyword. The odd window is LLaVA's: while fewer than ``P`` tokens are new it is ``new[P - len(new):]``.
    """

    def __init__(self, keyword: str, tokenizer, prompt_length: int):
        ids = tokenizer(keyword)["input_ids"]
        if len(ids) > 1 and ids[0] == getattr(tokenizer, "bos_token_id", None):
            ids = ids[1:]
        self.keyword, self.ids, self.tokenizer, self.start = keyword, torch.tensor(ids), tokenizer, prompt_length

    def stop(self, new: torch.Tensor) -> bool:
        """Whether the worker stops after the generated tokens ``new`` (int ``[n]``)."""
        if torch.equal(new[-len(self.ids):].cpu(), self.ids):
            return True
        window = min(new.shape[0] - self.start, len(self.ids))
        return self.keyword in self.tokenizer.decode(new[-window:], skip_special_tokens=True)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = [self.stop(row[self.start:]) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def autocast_like_worker(device: torch.device):
    """The worker's ``torch.autocast('cuda', dtype=torch.bfloat16)``; nothing on other devices."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


__all__ = [
    "IMAGE_ASPECTS", "LLAVA_LLAMA_2_SEPARATOR", "LLAVA_LLAMA_2_SYSTEM", "StopAtSeparator", "autocast_like_worker",
    "chunked_input_ids", "combined_question", "expand_to_square", "image_aspect", "image_inputs", "llava_llama_2",
    "separate_adjacent_images", "worker_text",
]
