"""``futuremask eval --dry-run``: write what the model would receive, without loading its weights.

For every run folder and task: ``<run>/<Task>/prompts.jsonl``, one JSON object per sample, in the data
file's order::

    {"sample_id": ..., "text": the exact string tokenized (images as the model's image token),
     "images": the kept images' paths relative to the data dir, "input_ids": the ids the model receives}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..io import write_text_atomic
from .data import Task
from .prompt_styles import get_style
from .runner import RunConfig, prompt_settings


def prompt_records(processor, model_config, task: Task, data_dir: str | os.PathLike, config: RunConfig) -> list[dict]:
    """One record per sample of ``task``: text, kept images and input ids in ``config.prompt_style``."""
    style = get_style(config.prompt_style)
    settings = prompt_settings(model_config, processor, task, config)
    records = []
    for sample in task.samples:
        prompt = style.build(sample, processor, settings)
        ids = style.encode(processor, prompt, settings)["input_ids"][0].tolist()
        records.append({"sample_id": sample.sample_id, "text": prompt.text,
                        "images": [os.path.relpath(p, data_dir) for p in prompt.image_paths], "input_ids": ids})
    return records


def write_prompts(
    processor, model_config, tasks: Sequence[Task], data_dir: str | os.PathLike, run_dirs: Sequence[Path],
    config: RunConfig,
) -> list[Path]:
    """Write ``<run_dir>/<Task>/prompts.jsonl`` (atomically) for every run folder and task; return the files."""
    written = []
    for task in tasks:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n"
                       for r in prompt_records(processor, model_config, task, data_dir, config))
        for run_dir in run_dirs:
            path = Path(run_dir) / task.name / "prompts.jsonl"
            write_text_atomic(path, text)
            written.append(path)
    return written


__all__ = ["prompt_records", "write_prompts"]
