"""Training examples from MileBench-format tasks, with exactly the prompts the evaluation builds.

Each sample becomes ``{"prompt", "images", "answer", "task", "sample_id"}``: the prompt is
:func:`futuremask.eval.prompts.build_prompt`'s chat-templated text (instruction, interleaved images,
choice list, left truncation to the context budget), the answer is the gold ``response``. So a model
trained on these examples is asked, at evaluation time, the very same strings.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

from ..eval.data import DataError, load_tasks
from ..eval.prompts import build_prompt, count_image_tokens


def _open_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        raise DataError(f"image {path} cannot be decoded ({type(err).__name__}: {err}); replace the file") from err


def milebench_examples(
    data_dir: str | os.PathLike,
    processor: Any,
    *,
    tasks: list[str] | None = None,
    limit: int | None = None,
    max_context_len: int = 4096,
) -> list[dict[str, Any]]:
    """Load MileBench-format tasks as SFT examples (see :class:`~futuremask.train.collator.SFTCollator`).

    Args:
        data_dir: ``<data_dir>/<Task>/<Task>.json`` folders.
        processor: the model's processor (its chat template and tokenizer build the prompts).
        tasks: task names or groups (all tasks present by default).
        limit: first ``limit`` samples of each task.
        max_context_len: the prompt budget in tokens, as in evaluation.

    Returns:
        A list of examples, task by task in file order.
    """
    examples: list[dict[str, Any]] = []
    tokens_per_image: int | None = None
    for task in load_tasks(data_dir, tasks, limit=limit):
        for sample in task.samples:
            if tokens_per_image is None and sample.image_paths:
                tokens_per_image = count_image_tokens(processor, _open_rgb(sample.image_paths[0]))
            prompt = build_prompt(sample, processor, max_context_len, tokens_per_image or 0)
            examples.append({
                "prompt": prompt.text,
                "images": [_open_rgb(p) for p in prompt.image_paths],
                "answer": sample.response,
                "task": sample.task,
                "sample_id": sample.sample_id,
            })
    return examples


def example_words(examples: list[dict[str, Any]]) -> list[str]:
    """Whitespace-separated words of every prompt and answer, in first-seen order (a word-level vocabulary)."""
    seen: dict[str, None] = {}
    for example in examples:
        for word in f"{example['prompt']} {example['answer']}".split():
            seen.setdefault(word, None)
    return list(seen)


__all__ = ["example_words", "milebench_examples"]
