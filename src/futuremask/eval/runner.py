"""Generate MileBench predictions under one or several mask policies, with resume and sharding.

Layout of a run (one per policy, and merge when given)::

    <output_dir>/<run_name>/run.json              settings: model, policy, merge, backend, ...
    <output_dir>/<run_name>/<Task>/pred.json      official records, in the data file's order
    <output_dir>/<run_name>/<Task>/pred.partial/  finished batches while the task runs (part-NNNNN.json)

Every file is written atomically (temporary file, then rename). An interrupted run is resumed by
running the same command again: finished samples are read back from ``pred.json`` and the partial
batches and are never generated again. Under ``accelerate launch`` (or any launcher that sets
``RANK``/``WORLD_SIZE``) rank ``r`` takes samples ``r, r + W, ...`` of each task, writes
``pred.rank<r>.json`` when its shard is done, and rank 0 merges the shards into ``pred.json``.

``run.json`` is the folder's one truth: the settings and, per task, the fingerprint of every sample
predicted there (:func:`futuremask.eval.data.sample_fingerprint`) and the task file's sha256. A run
resumes only when the settings are the same and every finished prediction's sample still has the
same fingerprint; otherwise it stops before any work and asks for ``--overwrite``, which replaces
the run folder as a whole. A run folder holding no prediction (a run that failed before its first
batch) is simply reused. One process at a time writes a run folder (:class:`~futuremask.io.FolderLock`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import FolderLock, read_json, write_json_atomic
from ..layers import check_layers
from ..layout import text_config
from ..merge import Merge
from ..merge_spec import merge_label, merge_spec
from .data import Sample, Task
from .prompt_styles import PromptSettings, get_style, load_images
from .prompts import Prompt, count_image_tokens

DEFAULT_CONTEXT_LEN = 4096  # the paper's budget for LLaVA-1.5 (capped by the model's positions)
SETTINGS_KEYS = ("model", "policy", "merge", "layers", "backend", "max_new_tokens", "max_context_len",
                 "tokens_per_image", "adv", "gen_kwargs", "prompt_style", "image_aspect", "combine_images")


# --- names and files ---------------------------------------------------------------------------------


def model_slug(model: str) -> str:
    """A folder-safe name for a model path or hub id (its last path component)."""
    name = str(model).rstrip("/\\").replace("\\", "/").split("/")[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def run_name(model: str, policy: str, merge: Merge | str | None = None, layers: str | None = None) -> str:
    """``<model_slug>__<policy>`` plus ``__merge-<word>`` with a merge and ``__layers-<0-15>`` with a schedule.

    The word is :func:`futuremask.merge_spec.merge_spec`'s: ``kernel`` for the default ``Merge()``,
    ``kernel-k5`` for ``Merge(kernel=5)``; a kind name stands for that kind's default merge.
    """
    name = f"{model_slug(model)}__{policy}"
    merge = Merge.coerce(merge)
    name = f"{name}__merge-{merge_spec(merge)}" if merge else name
    return f"{name}__layers-{layers}" if layers else name


def _read_records(path: Path) -> list[dict]:
    return read_json(path, list, "prediction file")


def _partial_dir(task_dir: Path, rank: int | None) -> Path:
    return task_dir / ("pred.partial" if rank is None else f"pred.rank{rank}.partial")


def _finished(task_dir: Path) -> dict[int, dict]:
    """Every finished record of a task folder: pred.json, shard files and partial batches, by int sample_id."""
    files = [task_dir / "pred.json", *sorted(task_dir.glob("pred.rank*.json"))]
    for part_dir in sorted(task_dir.glob("pred*.partial")):
        files.extend(sorted(part_dir.glob("part-*.json")))
    done: dict[int, dict] = {}
    for path in files:
        if path.is_file():
            for record in _read_records(path):
                done[int(record["sample_id"])] = record
    return done


def _ordered(task: Task, done: dict[int, dict]) -> list[dict]:
    """Records in the data file's order; records of samples outside the selection (kept, never lost) last."""
    selected = [int(s.sample_id) for s in task.samples]
    rest = sorted(k for k in done if k not in set(selected))
    return [done[k] for k in selected if k in done] + [done[k] for k in rest]


# --- generation ---------------------------------------------------------------------------------------


@torch.no_grad()
def generate_batch(model, processor, prompts: Sequence[Prompt], gen_kwargs: dict, style: str = "chat",
                   settings: PromptSettings | None = None) -> list[str]:
    """Greedy answers for a batch of prompts in a prompt style, decoded without special tokens and stripped."""
    return get_style(style).generate(model, processor, prompts, gen_kwargs, settings)


def _batches(prompts: list[Prompt], batch_size: int) -> list[list[Prompt]]:
    """``prompts`` ordered by image count (the data order among equal counts), cut into batches.

    A batch holds prompts of similar length (little padding), and only a task's last batch is short:
    ``ceil(len(prompts) / batch_size)`` batches, where cutting each image count apart would leave a
    short batch per count.
    """
    ordered = sorted(prompts, key=lambda p: len(p.image_paths))
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


# --- runs ---------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """What a run generates with; everything in :data:`SETTINGS_KEYS` goes to ``run.json``."""

    model: str
    policy: str
    merge: Merge | None = None  # a kind name is read as that kind's default Merge; run.json holds merge_spec's word
    layers: str | None = None  # a per-layer schedule such as "0-15" (None: every layer)
    backend: str = "auto"
    max_new_tokens: int = 512
    max_context_len: int | None = None  # None: min(4096, the model's max positions)
    tokens_per_image: int | None = None  # None: measured with the processor on each task's first image
    adv: bool = False  # scored against <Task>-adv.json (generation always reads <Task>.json, as the official code)
    prompt_style: str = "chat"  # a name of futuremask.eval.prompt_styles.STYLES
    image_aspect: str | None = None  # milebench style: pad | processor (resolved from the checkpoint's config)
    combine_images: int | None = None  # milebench style: the dataset's combined mode
    batch_size: int = 1
    overwrite: bool = False
    progress: bool = True
    rank: int = 0
    world_size: int = 1
    merge_timeout_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        self.merge = Merge.coerce(self.merge)
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("max_context_len", "tokens_per_image"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (1 if name == "max_context_len" else 0)):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")

    @property
    def gen_kwargs(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": 1, "do_sample": False, "num_beams": 1}

    def settings(self) -> dict:
        values = {k: getattr(self, k) for k in SETTINGS_KEYS}
        values["tokens_per_image"] = self.tokens_per_image if self.tokens_per_image is not None else "auto"
        values["merge"] = merge_spec(self.merge)
        return values


def shard_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from ``RANK``/``WORLD_SIZE`` (set by ``accelerate launch``/``torchrun``), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


def context_len(model_config, config: RunConfig) -> int:
    """The run's truncation budget: ``config.max_context_len``, else min(4096, the model's positions)."""
    if config.max_context_len is not None:
        return config.max_context_len
    text = text_config(model_config)
    return min(DEFAULT_CONTEXT_LEN, int(getattr(text, "max_position_embeddings", DEFAULT_CONTEXT_LEN)))


def _has_predictions(run_dir: Path) -> bool:
    """Whether any task folder of ``run_dir`` holds a finished prediction (final, shard or partial batch)."""
    return any(run_dir.glob("*/pred.json")) or any(run_dir.glob("*/pred.rank*.json")) or \
        any(run_dir.glob("*/pred*.partial/part-*.json"))


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_run_dir(run_dir: Path, config: RunConfig, tasks: Sequence[Task]) -> None:
    """Refuse to resume into ``run_dir`` when its predictions were made with other settings or data.

    ``max_context_len=None`` (not resolved yet: the model is not loaded) is not compared. Nothing is
    checked with ``overwrite`` or when the folder holds no prediction.

    Raises:
        ValueError: naming the differing settings or the samples whose data changed, and the fix.
    """
    if config.overwrite or not _has_predictions(run_dir):
        return
    fix = "pass --overwrite to replace the run, or another --output-dir"
    path = run_dir / "run.json"
    if not path.is_file():
        if any(run_dir.glob("*/pred.json")):
            raise ValueError(f"{run_dir} holds predictions but no run.json, so their settings are unknown; {fix}")
        return  # only shards of a sharded run whose rank 0 has not started yet
    old = read_json(path, dict, "run settings file (run.json)")
    settings = config.settings()
    keys = [k for k in SETTINGS_KEYS if k != "max_context_len" or config.max_context_len is not None]
    changed = [k for k in keys if old.get(k) != settings[k]]
    if changed:
        found = ", ".join(f"{k}={old.get(k)!r}" for k in changed)
        raise ValueError(f"{run_dir} holds predictions made with other settings ({found}); {fix}")
    for task in tasks:
        task_dir = run_dir / task.name
        done = _finished(task_dir) if task_dir.is_dir() else {}
        recorded = (old.get("data") or {}).get(task.name, {}).get("samples")
        if done and not isinstance(recorded, dict):
            raise ValueError(f"{run_dir}/run.json records no data fingerprint for {task.name} (an older run); {fix}")
        stale = [k for k in done if recorded.get(str(k)) is None or recorded.get(str(k)) != task.fingerprints.get(k)]
        if stale:
            raise ValueError(
                f"{run_dir}: {len(stale)} prediction(s) of {task.name} (sample_id {sorted(stale)[:5]}) were made on "
                f"other data: {task.path} changed since, or lost these samples; {fix}"
            )


def _prepare_run_dir(run_dir: Path, config: RunConfig, tasks: Sequence[Task]) -> None:
    """Check ``run_dir`` (see :func:`check_run_dir`), replace it with ``overwrite``, write ``run.json`` (rank 0).

    ``run.json`` keeps the tasks and sample fingerprints of predictions made before (they were just
    checked), adds those of this run's selection, and records each task file's sha256.
    """
    check_run_dir(run_dir, config, tasks)
    if config.rank != 0:
        return
    path = run_dir / "run.json"
    if config.overwrite:
        shutil.rmtree(run_dir, ignore_errors=True)
    old = read_json(path, dict, "run settings file (run.json)") if path.is_file() and _has_predictions(run_dir) else {}
    data = dict(old.get("data") or {})
    for task in tasks:
        samples = dict((data.get(task.name) or {}).get("samples") or {})
        samples.update({str(int(s.sample_id)): task.fingerprints[int(s.sample_id)] for s in task.samples})
        data[task.name] = {"file": task.path.name, "sha256": _file_sha256(task.path), "samples": samples}
    names = sorted(set(old.get("tasks", [])) | {t.name for t in tasks})
    write_json_atomic(path, {**config.settings(), "tasks": names, "data": data})


def _my_samples(task: Task, config: RunConfig) -> list[Sample]:
    return [s for i, s in enumerate(task.samples) if i % config.world_size == config.rank]


def remaining(task: Task, run_dir: Path, config: RunConfig) -> list[Sample]:
    """The samples of this rank's shard that still need a prediction (all of them with ``overwrite``)."""
    task_dir = run_dir / task.name
    mine = _my_samples(task, config)
    if config.overwrite or not task_dir.is_dir():
        return mine
    if (task_dir / "pred.json").is_file():
        main = _finished_main(task_dir)
        if all(int(s.sample_id) in main for s in task.samples):
            return []
    done = _finished(task_dir)
    return [s for s in mine if int(s.sample_id) not in done]


def run_task(model, processor, task: Task, run_dir: Path, config: RunConfig, bar=None) -> Path | None:
    """Generate the missing predictions of one task into ``run_dir/<Task>``; return pred.json (rank 0).

    Args:
        bar: a tqdm bar to advance per finished sample (one is made for the task when None).
    """
    task_dir = run_dir / task.name
    rank, world = config.rank, config.world_size
    todo = remaining(task, run_dir, config)
    task_dir.mkdir(parents=True, exist_ok=True)
    if not todo and (task_dir / "pred.json").is_file():
        return task_dir / "pred.json" if rank == 0 else None
    if todo:
        _generate(model, processor, task, todo, task_dir, config, bar)
    done = _finished(task_dir)
    if world == 1:
        return _finish(task, task_dir, done)
    write_json_atomic(task_dir / f"pred.rank{rank}.json", [done[int(s.sample_id)] for s in _my_samples(task, config)])
    shutil.rmtree(_partial_dir(task_dir, rank), ignore_errors=True)
    if rank != 0:
        return None
    _wait_for_shards(task_dir, world, config.merge_timeout_s)
    return _finish(task, task_dir, _finished(task_dir))


def _finished_main(task_dir: Path) -> dict[int, dict]:
    return {int(r["sample_id"]): r for r in _read_records(task_dir / "pred.json")}


def _finish(task: Task, task_dir: Path, done: dict[int, dict]) -> Path:
    missing = [s.sample_id for s in task.samples if int(s.sample_id) not in done]
    if missing:
        raise RuntimeError(f"{task.name}: no prediction for samples {missing[:10]} after all shards finished")
    out = task_dir / "pred.json"
    write_json_atomic(out, _ordered(task, done))
    for path in task_dir.glob("pred.rank*.json"):
        path.unlink(missing_ok=True)
    for path in task_dir.glob("pred*.partial"):
        shutil.rmtree(path, ignore_errors=True)
    return out


def _wait_for_shards(task_dir: Path, world: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    wanted = [task_dir / f"pred.rank{r}.json" for r in range(world)]
    while not all(p.is_file() for p in wanted):
        if time.monotonic() > deadline:
            absent = [p.name for p in wanted if not p.is_file()]
            raise RuntimeError(f"rank 0 waited {timeout_s:.0f}s for {absent} in {task_dir}; did a rank fail?")
        time.sleep(1.0)


def prompt_settings(model_config, processor, task: Task, config: RunConfig) -> PromptSettings:
    """The truncation budget and image handling of ``task``'s prompts (tokens per image measured with the
    processor on the task's first image when the run does not name it)."""
    tokens_per_image = config.tokens_per_image
    if tokens_per_image is None:
        first = next((p for s in task.samples for p in s.image_paths), None)
        tokens_per_image = count_image_tokens(processor, load_images([first])[0]) if first else 0
    return PromptSettings(max_context_len=context_len(model_config, config), tokens_per_image=tokens_per_image,
                          image_aspect=config.image_aspect or "processor", combine_images=config.combine_images)


def _generate(model, processor, task: Task, todo: list[Sample], task_dir: Path, config: RunConfig, bar) -> None:
    settings = prompt_settings(model.config, processor, task, config)
    style = get_style(config.prompt_style)
    prompts = [style.build(s, processor, settings) for s in todo]
    part_dir = _partial_dir(task_dir, config.rank if config.world_size > 1 else None)
    part_dir.mkdir(parents=True, exist_ok=True)
    counter = len(list(part_dir.glob("part-*.json")))
    own_bar = bar is None
    if own_bar:
        bar = _progress(len(prompts), f"{config.policy} {task.name}", config)
    try:
        for batch in _batches(prompts, config.batch_size):
            answers = generate_batch(model, processor, batch, config.gen_kwargs, style=style.name, settings=settings)
            records = [_record(p, a, config) for p, a in zip(batch, answers, strict=True)]
            while (part_dir / f"part-{counter:05d}.json").exists():
                counter += 1
            write_json_atomic(part_dir / f"part-{counter:05d}.json", records, indent=None)
            counter += 1
            bar.update(len(batch))
            bar.set_postfix_str(task.name, refresh=False)
    finally:
        if own_bar:
            bar.close()


def _progress(total: int, desc: str, config: RunConfig):
    """A tqdm bar in samples: shows samples/s and the ETA."""
    return tqdm(total=total, desc=desc, unit="sample", disable=not config.progress, dynamic_ncols=True)


def _record(prompt: Prompt, answer: str, config: RunConfig) -> dict:
    """A pred.json record with the official fields."""
    return {
        "sample_id": prompt.sample.sample_id,
        "image": list(prompt.image_paths),
        "question": prompt.question,
        "gt_response": prompt.sample.response,
        "gen_model_id": config.model,
        "pred_response": answer,
        "gen_kwargs": config.gen_kwargs,
    }


def run_layers(policy: str, layers: str | None) -> str | None:
    """The schedule a run of ``policy`` records (compact, as in its folder name); None for ``causal``,
    which is the stock model on every layer whatever the schedule."""
    from ..layers import normalize_layers
    from ..policies import get_policy

    return None if get_policy(policy).is_causal else normalize_layers(layers)


def run_dirs(output_dir: str | os.PathLike, config: RunConfig, policies: Sequence[str]) -> list[Path]:
    """The run folder of each policy: ``<output_dir>/<run_name>``."""
    return [Path(output_dir) / run_name(config.model, policy, config.merge, run_layers(policy, config.layers))
            for policy in policies]


class RunClaim:
    """The run folders of one ``evaluate`` call, checked and locked (a context manager).

    Entering locks every run folder (per rank when sharded) and runs :func:`check_run_dir` on each, so
    a second process writing the same folders, or a resume with other settings or data, fails before
    the model is loaded. ``evaluate`` claims the folders itself when it is not given a claim.
    """

    def __init__(self, output_dir: str | os.PathLike, config: RunConfig, policies: Sequence[str],
                 tasks: Sequence[Task]) -> None:
        if config.overwrite and config.world_size > 1:
            raise ValueError(
                "--overwrite cannot replace run folders from several processes at once; delete the run "
                f"folders under {output_dir} first (or use another --output-dir) and launch without --overwrite"
            )
        self.config, self.policies, self.tasks = config, list(policies), list(tasks)
        self.dirs = run_dirs(output_dir, config, policies)
        self._stack = ExitStack()

    def __enter__(self) -> RunClaim:
        tag = f".rank{self.config.rank}" if self.config.rank else ""
        try:
            for run_dir, policy in zip(self.dirs, self.policies, strict=True):
                self._stack.enter_context(FolderLock(run_dir, what="run folder", tag=tag))
                cfg = replace(self.config, policy=policy, layers=run_layers(policy, self.config.layers))
                check_run_dir(run_dir, cfg, self.tasks)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()


def evaluate(
    model,
    processor,
    tasks: Sequence[Task],
    policies: Sequence[str],
    output_dir: str | os.PathLike,
    config: RunConfig,
    claim: RunClaim | None = None,
) -> list[Path]:
    """Run every policy over every task, reusing the loaded model; return the run folders.

    Each policy is applied with :func:`futuremask.apply` for its run and removed afterwards. ``config``
    gives everything but the policy (its ``policy`` field is replaced per run). ``claim``: the
    :class:`RunClaim` of these folders, already entered (made here when None).
    """
    import futuremask as fm

    if claim is None:
        check_layers(model, config.layers)
        with RunClaim(output_dir, config, policies, tasks) as own:
            return evaluate(model, processor, tasks, policies, output_dir, config, own)
    check_layers(model, config.layers)
    runs = []
    resolved = replace(config, max_context_len=context_len(model.config, config))
    for policy, run_dir in zip(policies, claim.dirs, strict=True):
        cfg = replace(resolved, policy=policy, layers=run_layers(policy, config.layers))
        _prepare_run_dir(run_dir, cfg, tasks)
        total = sum(len(remaining(task, run_dir, cfg)) for task in tasks)
        label = merge_label(policy, cfg.merge)
        handle = fm.apply(model, policy, merge=cfg.merge, backend=cfg.backend, layers=cfg.layers)
        try:
            with _progress(total, label, cfg) as bar:
                for task in tasks:
                    run_task(model, processor, task, run_dir, cfg, bar)
        finally:
            handle.remove()
        runs.append(run_dir)
    return runs


__all__ = ["RunClaim", "RunConfig", "check_run_dir", "context_len", "evaluate", "generate_batch", "model_slug",
           "prompt_settings", "remaining", "run_dirs", "run_name", "run_task", "shard_from_env"]
