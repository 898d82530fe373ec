"""MileBench data on disk: task discovery, groups, loading and validation.

A task lives in ``<data_dir>/<Task>/<Task>.json`` (or ``<Task>-adv.json``) with its images under
``<data_dir>/<Task>/images/``. MileBench's combined mode (``combine=N``) reads ``<Task>_combined_N.json``
(``<Task>.json`` for N = 1) and the images of ``task_instance["combined_N_images"]`` under
``<data_dir>/<Task>/combined_N_images/``, as the official ``generate.py`` does. Loading validates everything a run needs *before* anything is generated
or written, and every problem is a :class:`DataError` that names the file and the sample.
Images are checked with a cheap header read (the format must be one PIL decodes); a :class:`Sample`
only holds their paths.

Every sample has a *fingerprint*, :func:`sample_fingerprint`: a hash of everything a prediction
depends on (its instruction, context, image names and choices; not its gold answer, which scoring
always reads from the data). Run folders record the fingerprints of their predictions, so a
prediction made on other data is never mixed into a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tasks import CATEGORIES, TASK_GROUPS, expand_task_names

QUESTION_TYPES = ("open-ended", "multi-choice")
PLACEHOLDER_RE = re.compile(r"\{(image|table)#(\d+)\}")


class DataError(ValueError):
    """A benchmark file or sample that cannot be used; the message names the file, the sample and the fix."""


@dataclass
class Sample:
    """One benchmark sample, validated; images are paths, opened only when the prompt is built."""

    task: str
    index: int  # position in the task file
    sample_id: Any  # as in the file (int-like); the key of pred.json records
    instruction: str
    context: str
    image_paths: list[str]  # <data_dir>/<Task>/images/<p> (combined: combined_N_images/<p>), in order
    response: str
    choice_list: list[str] | None
    raw: dict = field(repr=False, default_factory=dict)


@dataclass
class Task:
    """A loaded task: its file, question type, instructions and (possibly limited) samples."""

    name: str
    path: Path
    question_type: str
    instructions: list[str]
    samples: list[Sample]
    total: int  # number of samples in the file, before --limit
    fingerprints: dict[int, str] = field(default_factory=dict, repr=False)  # int sample_id -> fingerprint, whole file


def sample_fingerprint(meta_data: dict, raw: dict) -> str:
    """16 hex digits identifying what a prediction of the raw sample ``raw`` depends on.

    Hashes the sample's instruction text, ``task_instance`` (context, image names, choices, ...) and
    the task's question type; the gold ``response`` is left out on purpose: fixing a gold answer
    keeps the predictions valid, since scoring reads the answer from the data.
    """
    instructions = meta_data.get("task_instruction") or []
    instructions = [instructions] if isinstance(instructions, str) else list(instructions)
    tid = raw.get("task_instruction_id", 0)
    instruction = instructions[tid] if isinstance(tid, int) and 0 <= tid < len(instructions) else None
    key = [meta_data.get("question_type"), instruction, raw.get("task_instance")]
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def file_fingerprints(annotation: dict) -> dict[int, str]:
    """``{int sample_id: fingerprint}`` of every sample of a parsed task file (ids that are not int skipped)."""
    meta = annotation.get("meta_data") or {}
    out: dict[int, str] = {}
    for raw in annotation.get("data") or []:
        try:
            out[int(raw["sample_id"])] = sample_fingerprint(meta, raw)
        except (TypeError, ValueError, KeyError):
            continue
    return out


def task_file(data_dir: str | os.PathLike, task: str, adv: bool = False, combine: int | None = None) -> Path:
    """``<data_dir>/<task>/<task>.json`` (``<task>-adv.json`` with ``adv``, ``<task>_combined_N.json`` with
    ``combine=N`` > 1)."""
    if adv and combine:
        raise DataError("the adversarial files have no combined-images variant; use --adv or --combine-images")
    if combine and combine != 1:
        return Path(data_dir) / task / f"{task}_combined_{combine}.json"
    return Path(data_dir) / task / (f"{task}-adv.json" if adv else f"{task}.json")


def available_tasks(data_dir: str | os.PathLike, adv: bool = False, combine: int | None = None) -> list[str]:
    """Task folders of ``data_dir`` that hold their task file, sorted by name."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data dir {str(root)!r} does not exist; pass --data-dir with the MileBench folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and task_file(root, p.name, adv, combine).is_file())


def resolve_tasks(
    data_dir: str | os.PathLike, tasks: list[str] | None = None, adv: bool = False, combine: int | None = None
) -> list[str]:
    """Expand task names and groups (``temporal``, ``semantic``, ``diagnostic``, ``all``) into task names.

    ``all`` (the default) is every task folder present. A group keeps the tasks of that group that are
    present. A task named explicitly must be present.
    """
    present = available_tasks(data_dir, adv, combine)
    try:
        names = expand_task_names(tasks, present)
    except LookupError as err:
        group = CATEGORIES[TASK_GROUPS[err.args[0]]]
        raise DataError(f"no task of group {err.args[0]!r} found in {str(data_dir)!r} (looked for {group})") from None
    for name in names:
        if name not in present:
            raise DataError(
                f"task {name!r}: {str(task_file(data_dir, name, adv, combine))!r} not found; tasks present: "
                f"{', '.join(present) or 'none'}; groups: {', '.join(TASK_GROUPS)}, all"
            )
    if not names:
        raise DataError(f"no MileBench task found in {str(data_dir)!r} (expected <Task>/<Task>.json folders)")
    return names


def _fail(path: Path, where: str, problem: str) -> DataError:
    return DataError(f"{path}: {where}: {problem}")


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise DataError(f'{path}: not a MileBench task file (expected {{"meta_data": {{...}}, "data": [...]}})')
    return payload


def _unreadable_image(path: str) -> str | None:
    """Why PIL cannot decode the image file at ``path`` (a cheap header check), or None."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - the header has been parsed once the size is known
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        return f"{type(err).__name__}: {err}"
    return None


def _norm(text: str) -> str:
    return " ".join(str(text).split()).lower()


def _sample(
    path: Path, task: str, index: int, raw: Any, instructions: list[str], question_type: str, combine: int | None
) -> Sample:
    if not isinstance(raw, dict) or "sample_id" not in raw:
        raise _fail(path, f"sample #{index}", "not an object with a 'sample_id'")
    sid = raw["sample_id"]
    where = f"sample {sid!r} (#{index})"
    try:
        int(sid)
    except (TypeError, ValueError):
        raise _fail(path, where, "sample_id must be an integer (the official scorer keys samples by int)") from None
    inst = raw.get("task_instance")
    if not isinstance(inst, dict) or not isinstance(inst.get("context"), str):
        raise _fail(path, where, "missing task_instance.context (a string)")
    images = inst.get("images_path", [])
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise _fail(path, where, "task_instance.images_path must be a list of file names")
    tid = raw.get("task_instruction_id", 0)
    if not isinstance(tid, int) or not 0 <= tid < len(instructions):
        raise _fail(path, where, f"task_instruction_id {tid!r} is not an index into the {len(instructions)} "
                                 "meta_data.task_instruction entries")
    for kind, k in PLACEHOLDER_RE.findall(inst["context"]):
        if not 1 <= int(k) <= len(images):
            raise _fail(path, where, f"placeholder {{{kind}#{k}}} but the sample has {len(images)} image(s) "
                                     "(placeholders are 1-based indices into images_path)")
    image_dir = path.parent / "images"
    if combine:
        key = f"combined_{combine}_images"
        images = inst.get(key)
        if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
            raise _fail(path, where, f"--combine-images {combine} needs task_instance.{key} (a list of file names; "
                                     "MileBench's data/combine_images.py writes it)")
        image_dir = path.parent / key
    full = [str(image_dir / p) for p in images]
    for name, p in zip(images, full, strict=True):
        if not os.path.isfile(p):
            raise _fail(path, where, f"image {name!r} not found at {p}")
        problem = _unreadable_image(p)
        if problem:
            raise _fail(path, where, f"image {name!r} at {p} cannot be decoded ({problem}); replace the file")
    if "response" not in raw:
        raise _fail(path, where, "missing 'response' (the gold answer)")
    response = raw["response"]
    if isinstance(response, (list, dict)) or response is None or not str(response).strip():
        raise _fail(path, where, f"the gold answer 'response' is {response!r}; it must be a non-empty string")
    response = str(response)
    choices = inst.get("choice_list")
    if choices is not None:
        if not isinstance(choices, list) or not choices:
            raise _fail(path, where, "choice_list must be a non-empty list")
        choices = [str(c) for c in choices]
    if question_type == "multi-choice":
        if choices is None:
            raise _fail(path, where, "multi-choice task but the sample has no task_instance.choice_list")
        if _norm(response) not in {_norm(c) for c in choices}:
            raise _fail(path, where, f"answer {response!r} is not among the choices {choices}")
    return Sample(task=task, index=index, sample_id=sid, instruction=instructions[tid], context=inst["context"],
                  image_paths=full, response=response, choice_list=choices, raw=raw)


def load_task(
    data_dir: str | os.PathLike, task: str, limit: int | None = None, adv: bool = False, combine: int | None = None
) -> Task:
    """Load and validate one task (its first ``limit`` samples when given; combined images with ``combine``).

    Raises:
        DataError: malformed JSON, a missing image, a placeholder index out of range, a multiple-choice
            answer not among its choices, a duplicate sample_id, ...; the message names file and sample.
    """
    path = task_file(data_dir, task, adv, combine)
    if not path.is_file():
        raise DataError(f"{path}: task file not found")
    payload = _read_json(path)
    meta = payload.get("meta_data") or {}
    instructions = meta.get("task_instruction")
    if isinstance(instructions, str):
        instructions = [instructions]
    if not isinstance(instructions, list) or not instructions:
        raise DataError(f"{path}: meta_data.task_instruction must be a non-empty list of strings")
    question_type = meta.get("question_type")
    if question_type not in QUESTION_TYPES:
        raise DataError(f"{path}: meta_data.question_type is {question_type!r}; expected one of {QUESTION_TYPES}")
    records = payload["data"]
    if not records:
        raise DataError(f"{path}: the task has no samples (its 'data' list is empty); add samples or leave "
                        "the task out with --tasks")
    if limit is not None:
        if limit < 1:
            raise DataError(f"--limit must be at least 1, got {limit}")
        records = records[:limit]
    samples, seen = [], set()
    for index, raw in enumerate(records):
        sample = _sample(path, task, index, raw, instructions, question_type, combine)
        key = int(sample.sample_id)
        if key in seen:
            raise _fail(path, f"sample {sample.sample_id!r} (#{index})", "duplicate sample_id")
        seen.add(key)
        samples.append(sample)
    return Task(name=task, path=path, question_type=question_type, instructions=instructions,
                samples=samples, total=len(payload["data"]), fingerprints=file_fingerprints(payload))


def load_tasks(
    data_dir: str | os.PathLike,
    tasks: list[str] | None = None,
    limit: int | None = None,
    adv: bool = False,
    combine: int | None = None,
) -> list[Task]:
    """Resolve names/groups and load every task, validating all of them before returning."""
    names = resolve_tasks(data_dir, tasks, adv, combine)
    return [load_task(data_dir, name, limit=limit, adv=adv, combine=combine) for name in names]


def check_adv_files(data_dir: str | os.PathLike, tasks: Sequence[Task]) -> None:
    """Refuse ``--adv`` before any work when a task has no ``<Task>-adv.json`` to score against."""
    absent = [str(task_file(data_dir, t.name, adv=True)) for t in tasks if not task_file(data_dir, t.name, True).is_file()]
    if absent:
        raise DataError(f"--adv scores against <Task>-adv.json, not found: {', '.join(absent)}")


__all__ = [
    "DataError", "check_adv_files", "Sample", "Task",
    "available_tasks", "file_fingerprints", "load_task", "load_tasks", "resolve_tasks", "sample_fingerprint",
    "task_file",
]
