"""MileBench prompt construction, left truncation to a context budget, and the model's chat template.

The steps follow the official ``MileBenchDataset.__getitem__``:

1. the sample's ``context``, plus for multiple choice ``"\\nChoice list: \\n"``, one ``"A. option"`` line per
   choice (GPR1200: the options without letters) and ``"\\nYour answer is: "``;
2. every ``{image#k}`` / ``{table#k}`` becomes an image slot (:data:`IMAGE_SLOT`);
3. the context is cut into text fragments at the slots and walked from the end: a fragment is kept
   if its tokens fit the budget ``max_context_len - len(tokens(instruction))``, then the image before
   it if ``tokens_per_image`` more fit. The first fragment that does not fit ends the walk (when it is
   the very last fragment, its last tokens are kept). Kept fragments are re-decoded by the tokenizer;
4. the prompt is ``instruction + "\\n" + context`` with the kept images' slots.

:func:`chat_text` then wraps the prompt with the processor's own chat template, images interleaved
at their slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .data import Sample

IMAGE_SLOT = "<ImageHere>"


def choice_suffix(choices: Sequence[str], task: str) -> str:
    """The official choice block: ``"\\nChoice list: \\nA. x\\nB. y\\nYour answer is: "``."""
    if task == "GPR1200":  # > 26 options: listed without letters
        lines = [str(c) for c in choices]
    else:
        lines = [f"{_letter(i)}. {c}" for i, c in enumerate(choices)]
    return "\nChoice list: \n" + "\n".join(lines) + "\nYour answer is: "


def _letter(i: int) -> str:
    return chr(65 + i)  # as the official code: A..Z, then the characters after Z


def raw_context(sample: Sample) -> str:
    """The sample's context with the choice block appended and every placeholder replaced by a slot."""
    context = sample.context
    if sample.choice_list is not None:
        context += choice_suffix(sample.choice_list, sample.task)
    for k in range(1, len(sample.image_paths) + 1):
        context = context.replace(f"{{image#{k}}}", IMAGE_SLOT).replace(f"{{table#{k}}}", IMAGE_SLOT)
    return context


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def truncate(
    instruction: str,
    context: str,
    image_paths: Sequence[str],
    tokenizer,
    max_context_len: int,
    tokens_per_image: int,
) -> tuple[str, list[str]]:
    """Left-truncate ``context`` (with :data:`IMAGE_SLOT` slots) to the budget, as MileBench does.

    Args:
        instruction: the task instruction; always kept, its tokens come off the budget.
        context: text with one :data:`IMAGE_SLOT` per image, in order.
        image_paths: the sample's images, one per slot.
        tokenizer: a Hugging Face tokenizer (text tokens are counted without special tokens).
        max_context_len: the budget in tokens.
        tokens_per_image: tokens counted for each kept image.

    Returns:
        ``(prompt, kept_image_paths)``: ``instruction + "\\n" + kept context`` and the images of its slots
        (the latest ones: the earliest images are dropped first).
    """
    budget = max_context_len - len(_encode(tokenizer, instruction))
    if budget <= 0:
        raise ValueError(
            f"max_context_len={max_context_len} leaves no room after the task instruction; raise --max-context-len"
        )
    pending = list(image_paths)
    kept_images: list[str] = []
    chunks: list[list[int]] = []
    used = 0
    starts_with_image = False
    for fragment in reversed(context.split(IMAGE_SLOT)):
        ids = _encode(tokenizer, fragment)
        if len(ids) + used > budget:
            if not chunks:  # the question alone is too long: keep its end
                chunks.insert(0, ids[-budget:])
            break
        starts_with_image = False
        chunks.insert(0, ids)
        used += len(ids)
        if tokens_per_image + used > budget:
            break
        if pending:
            starts_with_image = True
            kept_images.insert(0, pending.pop())
            used += tokens_per_image
    body = "".join(tokenizer.decode(ids) + IMAGE_SLOT for ids in chunks[:-1]) + tokenizer.decode(chunks[-1])
    if starts_with_image:
        body = IMAGE_SLOT + body
    return instruction + "\n" + body, kept_images


@dataclass
class Prompt:
    """A built prompt: the MileBench prompt string (``question``), its chat-templated text and images."""

    sample: Sample
    question: str  # instruction + "\n" + context, images as IMAGE_SLOT (the official 'question' field)
    text: str  # after the chat template, images as the processor's image token(s)
    image_paths: list[str]


def _template_interleaves(processor) -> bool:
    """Whether the chat template renders an image part where it stands (some move all images first)."""
    def render(content):
        return processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    a, b = "\x01fm-a\x01", "\x01fm-b\x01"
    plain = render([{"type": "text", "text": a}, {"type": "text", "text": b}])
    mixed = render([{"type": "text", "text": a}, {"type": "image"}, {"type": "text", "text": b}])

    def between(s: str) -> str:
        return s[s.index(a) + len(a): s.index(b)]

    return between(plain) != between(mixed)


def image_token_text(processor) -> str:
    """The text a processor expects for one image in a prompt (its ``image_token``)."""
    token = getattr(processor, "image_token", None)
    if not token:
        raise ValueError(f"{type(processor).__name__} has no image_token; cannot place images in a prompt")
    return token


def chat_text(processor, question: str) -> str:
    """Wrap a MileBench prompt in the processor's chat template, one user turn, generation prompt added.

    Images stay interleaved at their slots: as image parts when the template renders parts in place,
    else (templates that hoist all images to the front, e.g. llava-hf) as the processor's image token
    inside the text. Without a chat template the prompt is used as is, slots as image tokens.
    """
    if getattr(processor, "chat_template", None) is None:
        return question.replace(IMAGE_SLOT, image_token_text(processor))
    cached = getattr(processor, "_fm_interleaves", None)  # (template, answer): probed once per template
    if cached is not None and cached[0] == processor.chat_template:
        interleaves = cached[1]
    else:
        interleaves = _template_interleaves(processor)
        processor._fm_interleaves = (processor.chat_template, interleaves)
    if interleaves:
        content: list[dict] = []
        for i, text in enumerate(question.split(IMAGE_SLOT)):
            if i:
                content.append({"type": "image"})
            if text:
                content.append({"type": "text", "text": text})
    else:
        content = [{"type": "text", "text": question.replace(IMAGE_SLOT, image_token_text(processor))}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def build_prompt(sample: Sample, processor, max_context_len: int, tokens_per_image: int) -> Prompt:
    """The full prompt of one sample: MileBench construction, truncation, chat template."""
    tokenizer = getattr(processor, "tokenizer", processor)
    question, images = truncate(sample.instruction, raw_context(sample), sample.image_paths, tokenizer,
                                max_context_len, tokens_per_image)
    return Prompt(sample=sample, question=question, text=chat_text(processor, question), image_paths=images)




def count_image_tokens(processor, image) -> int:
    """Tokens that one image adds to a chat prompt for this processor (its real expansion, wrappers included).

    Args:
        processor: a Hugging Face processor.
        image: a PIL image, processed (and resized) exactly as the processor does for the model.
    """
    with_image = processor(text=[chat_text(processor, IMAGE_SLOT + "x")], images=[image], return_tensors="pt")
    without = processor(text=[chat_text(processor, "x")], return_tensors="pt")
    return int(with_image["input_ids"].shape[1] - without["input_ids"].shape[1])


__all__ = [
    "IMAGE_SLOT", "Prompt", "build_prompt", "chat_text", "choice_suffix", "count_image_tokens", "raw_context",
    "truncate",
]
