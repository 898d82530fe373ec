"""Score MileBench predictions exactly as the official ``evaluate.py`` + ``score.py`` do.

Layout of a run (written by the runner, or by any tool)::

    <result_dir>/<Task>/pred.json              list of {"sample_id", "pred_response", "gt_response", ...}
    <result_dir>/<Task>/eval.json              {"Accuracy" | "Rouge-L f": mean,
                                                "image_quantity_level-Accuracy": {Few, Medium, Many},
                                                "image_quantity_level-Result": {level: [sum, count]}}
    <result_dir>/<Task>/eval_score.json        [{"id": "<sample_id>", "score": "<score>"}, ...]
    <result_dir>/<Task>/pred_with_extracted.json   multi-choice tasks only: the normalised records with
                                                   "choice_list", "extracted" and "result"
    <result_dir>/result.json, result.csv       the run summary (:mod:`futuremask.eval.summary`)

The data come from ``<data_dir>/<Task>/<Task>.json`` (``<Task>-adv.json`` with ``adv=True``); the gold
answers are always the data's (a ``gt_response`` in ``pred.json`` is ignored). When the run's
``run.json`` records sample fingerprints, every prediction must match its sample's fingerprint in
the data it was generated on (``<Task>.json``, also with ``adv``: the official code generates from it),
so predictions made on other data are never scored against this data. Every task is
scored in memory first; files are written (atomically) only when all requested tasks succeed.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..io import read_json, write_text_atomic
from .data import file_fingerprints
from .metrics import LEVELS, quantity_level, score_answer, scoring_rule
from .normalize import normalize_answer
from .options import extract_option
from .shared import id_key
from .summary import write_summary
from .tasks import TASK_GROUPS, expand_task_names


@dataclass
class TaskScores:
    """Everything the official scorer writes for one task.

    Attributes:
        task: task name.
        rule: ``"needle"``, ``"substring"``, ``"rouge"`` or ``"choice"``.
        eval: the ``eval.json`` dict.
        sample_scores: the ``eval_score.json`` list (prediction order).
        extracted: the ``pred_with_extracted.json`` records (``"choice"`` rule only, else ``None``).
    """

    task: str
    rule: str
    eval: dict[str, Any]
    sample_scores: list[dict[str, str]]
    extracted: list[dict[str, Any]] | None

    @property
    def metric(self) -> str:
        """``"Rouge-L f"`` or ``"Accuracy"``."""
        return next(iter(self.eval))

    @property
    def score(self) -> float:
        """The task's mean score in [0, 1]."""
        return float(self.eval[self.metric])


def _id_key(value: Any) -> Any:
    """Sample ids compare as integers when they look like integers (the official code calls ``int``)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return str(value)


def _check_text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: {field} must be a string, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True)
class RuleOutput:
    """What the official scorer writes for the tasks of one scoring rule.

    Attributes:
        metric: the headline key of ``eval.json`` (the mean of the sample scores).
        graded: every sample scores 0 or 1, kept in its record as ``"result"`` (ROUGE-L is a float).
        choices: multi-choice: the data's ``choice_list`` joins each record, and the records are written
            back normalised with the extracted option (``pred_with_extracted.json``).
        digits: rounding of a sample's score in ``eval_score.json`` (None: as it is).
    """

    metric: str
    graded: bool = True
    choices: bool = False
    digits: int | None = None


RULE_OUTPUTS = {
    "choice": RuleOutput("Accuracy", choices=True),
    "needle": RuleOutput("Accuracy"),
    "substring": RuleOutput("Accuracy"),
    "rouge": RuleOutput("Rouge-L f", graded=False, digits=3),
}


def score_task(task: str, annotation: dict[str, Any], predictions: list[dict[str, Any]]) -> TaskScores:
    """Score one task's predictions against its annotation file, without touching the disk.

    Three steps: :func:`check_task` (validate and join the data to the predictions), one
    :func:`score_record` per prediction, :func:`aggregate` (the files' contents).

    Args:
        task: the task name (decides the needle / MMCoQA rules).
        annotation: the parsed ``<Task>.json`` (``{"meta_data": {...}, "data": [...]}``).
        predictions: the parsed ``pred.json`` records; not modified.

    Raises:
        ValueError: empty predictions, a count different from the data count, a missing or duplicated
            sample id, a gold answer outside the choices, a non-string response.
    """
    rule, records = check_task(task, annotation, predictions)
    scores = [score_record(rule, rec, f"{task} sample {rec['sample_id']!r}") for rec in records]
    return aggregate(task, rule, records, scores)


def check_task(
    task: str, annotation: dict[str, Any], predictions: list[dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    """``(rule, records)``: copies of the predictions, each joined with its sample's gold answer,
    images and (multi-choice) choices, in prediction order; ValueError naming what does not fit."""
    meta = annotation.get("meta_data", {})
    if "question_type" not in meta:
        raise ValueError(
            f"{task}: meta_data has no 'question_type' (expected 'open-ended' or 'multi-choice')"
        )
    rule = scoring_rule(task, meta["question_type"])
    data = annotation.get("data")
    if not isinstance(data, list):
        raise ValueError(f"{task}: the annotation file has no 'data' list")
    if not predictions:
        raise ValueError(f"{task}: pred.json holds no predictions")
    if len(predictions) != len(data):
        raise ValueError(
            f"{task}: pred.json has {len(predictions)} predictions but the data has {len(data)} samples; "
            "finish (or re-run) the generation for every sample before scoring"
        )
    records = [copy.deepcopy(rec) for rec in predictions]
    by_id = _index_predictions(task, records)
    seen: set[Any] = set()
    for sample in data:
        if not isinstance(sample, dict):
            raise ValueError(f"{task}: the data must hold JSON objects, found {type(sample).__name__}")
        where = f"{task} sample {sample.get('sample_id')!r}"
        key = _id_key(sample.get("sample_id"))
        if key in seen:
            raise ValueError(f"{where}: this sample_id appears twice in the data file")
        seen.add(key)
        rec = by_id.get(key)
        if rec is None:
            raise ValueError(f"{where}: no prediction with this sample_id in pred.json")
        _join_sample(rec, sample, RULE_OUTPUTS[rule], where)
    return rule, records


def _index_predictions(task: str, records: list[Any]) -> dict[Any, dict[str, Any]]:
    """Prediction records by sample id (:func:`_id_key`); each must be an object with a unique id."""
    for rec in records:
        if not isinstance(rec, dict):
            found = f"{type(rec).__name__}: {rec!r:.200}"
            raise ValueError(f"{task}: pred.json must hold JSON objects, found {found}")
    by_id: dict[Any, dict[str, Any]] = {}
    for rec in records:
        if "sample_id" not in rec:
            raise ValueError(f"{task}: a prediction has no 'sample_id': {rec!r:.200}")
        key = _id_key(rec["sample_id"])
        if key in by_id:
            raise ValueError(f"{task}: sample_id {rec['sample_id']!r} appears twice in pred.json")
        by_id[key] = rec
    return by_id


def _join_sample(rec: dict[str, Any], sample: dict[str, Any], output: RuleOutput, where: str) -> None:
    """Copy what scoring reads from the data sample into the prediction record ``rec``."""
    instance = sample.get("task_instance", {})
    if output.choices:
        if "choice_list" not in instance:
            raise ValueError(f"{where}: multi-choice task without task_instance.choice_list")
        rec["choice_list"] = list(instance["choice_list"])
    images = instance.get("images_path")
    if not isinstance(images, list):
        raise ValueError(f"{where}: task_instance.images_path is missing or not a list")
    rec["image_quantity_level"] = sample.get("image_quantity_level", quantity_level(len(images)))
    rec["image"] = list(images)
    # the gold answer always comes from the data: a corrected answer counts without regenerating
    if sample.get("response") is None:
        raise ValueError(f"{where}: the sample has no gold answer 'response'")
    rec["gt_response"] = str(sample["response"])


def score_record(rule: str, rec: dict[str, Any], where: str) -> float | int:
    """One joined record's score under ``rule``; writes what the official files keep into ``rec``."""
    output = RULE_OUTPUTS[rule]
    gold = _check_text(rec["gt_response"], "gt_response", where)
    pred = _check_text(rec.get("pred_response"), "pred_response", where)
    try:
        score, extracted = score_answer(rule, pred, gold, rec.get("choice_list"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from err
    if output.choices:
        rec["gt_response"] = normalize_answer(gold)
        rec["pred_response"] = normalize_answer(pred)
        rec["choice_list"] = [normalize_answer(choice) for choice in rec["choice_list"]]
        rec["extracted"] = extracted
    if output.graded:
        rec["result"] = score
    return score


def aggregate(task: str, rule: str, records: list[dict[str, Any]], scores: list[float | int]) -> TaskScores:
    """The task's ``eval.json`` (mean, per image-quantity level) and ``eval_score.json`` from the scores."""
    output = RULE_OUTPUTS[rule]
    per_level: dict[str, list[float | int]] = {level: [] for level in LEVELS}
    sample_scores: list[dict[str, str]] = []
    for rec, score in zip(records, scores, strict=True):
        per_level[quantity_level(len(rec["image"]))].append(score)
        shown = score if output.digits is None else round(score, output.digits)
        sample_scores.append({"id": str(rec["sample_id"]), "score": str(shown)})
    eval_result = {
        output.metric: float(np.mean(scores)),
        "image_quantity_level-Accuracy": {k: float(np.mean(v)) if v else 0 for k, v in per_level.items()},
        "image_quantity_level-Result": {k: [sum(v), len(v)] for k, v in per_level.items()},
    }
    return TaskScores(task, rule, eval_result, sample_scores, records if output.choices else None)


def load_annotation(data_dir: str | os.PathLike, task: str, adv: bool = False) -> dict[str, Any]:
    """Read ``<data_dir>/<task>/<task>.json`` (or ``<task>-adv.json``)."""
    path = Path(data_dir) / task / (f"{task}-adv.json" if adv else f"{task}.json")
    if not path.is_file():
        raise FileNotFoundError(f"unknown task {task!r}: no annotation file {path}")
    annotation = read_json(path, what="annotation file")
    if not isinstance(annotation, dict) or "data" not in annotation:
        raise ValueError(f"{path}: expected {{'meta_data': ..., 'data': [...]}}")
    return annotation


def load_predictions(result_dir: str | os.PathLike, task: str) -> list[dict[str, Any]]:
    """Read ``<result_dir>/<task>/pred.json``."""
    path = Path(result_dir) / task / "pred.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{task}: no prediction file {path}; run `futuremask eval` for this task first"
        )
    return read_json(path, list, "prediction file")


def find_tasks(result_dir: str | os.PathLike) -> list[str]:
    """Tasks under ``result_dir`` that hold a ``pred.json``, sorted by name."""
    return sorted(path.parent.name for path in Path(result_dir).glob("*/pred.json"))


def expand_tasks(names: list[str] | None, result_dir: str | os.PathLike) -> list[str]:
    """Task names with the groups ``temporal``, ``semantic``, ``diagnostic`` and ``all`` expanded.

    A group stands for its MileBench tasks that have a ``pred.json`` under ``result_dir``; ``all`` (or
    no names) for every task folder with a ``pred.json``. Other names are kept as given.
    """
    try:
        return expand_task_names(names, find_tasks(result_dir))
    except LookupError as err:
        raise FileNotFoundError(f"no task of group {err.args[0]!r} has a pred.json under {result_dir}") from None


def write_task_scores(result_dir: str | os.PathLike, scores: TaskScores) -> None:
    """Write ``eval.json``, ``eval_score.json`` and (multi-choice) ``pred_with_extracted.json``."""
    folder = Path(result_dir) / scores.task
    if scores.extracted is not None:
        write_text_atomic(folder / "pred_with_extracted.json", json.dumps(scores.extracted, indent=4))
    write_text_atomic(folder / "eval.json", json.dumps(scores.eval))
    write_text_atomic(folder / "eval_score.json", json.dumps(scores.sample_scores, indent=4))


def _recorded_fingerprints(result_dir: Path) -> dict[str, dict[str, str]]:
    """``{task: {sample_id: fingerprint}}`` from the run's ``run.json`` (empty without one)."""
    path = result_dir / "run.json"
    if not path.is_file():
        return {}
    data = read_json(path, dict, "run settings file (run.json)").get("data") or {}
    return {task: entry.get("samples") or {} for task, entry in data.items() if isinstance(entry, dict)}


def _check_fingerprints(task: str, annotation: dict, predictions: list, recorded: dict | None, result_dir) -> None:
    """Refuse predictions whose sample (by fingerprint) is not the data's sample of that id any more."""
    if not recorded:
        return
    current = {str(k): v for k, v in file_fingerprints(annotation).items()}
    ids = [id_key(rec.get("sample_id")) for rec in predictions if isinstance(rec, dict)]
    stale = [i for i in ids if recorded.get(i) is not None and current.get(i) != recorded[i]]
    if stale:
        raise ValueError(
            f"{task}: {len(stale)} prediction(s) in {result_dir} (sample_id {stale[:5]}) were made on other data "
            "than this --data-dir holds; score them with the data they were made on, or regenerate them "
            "(futuremask eval --overwrite)"
        )


def score_run(
    data_dir: str | os.PathLike,
    result_dir: str | os.PathLike,
    tasks: list[str] | None = None,
    *,
    adv: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a run folder and write the per-task files and ``result.json`` / ``result.csv``.

    Args:
        data_dir: MileBench-format data root (``<data_dir>/<Task>/<Task>.json``).
        result_dir: the run folder, ``<output_dir>/<run_name>``, holding ``<Task>/pred.json``.
        tasks: the tasks (or groups, see :func:`expand_tasks`) to score; by default every task folder
            with a ``pred.json``.
        adv: score against the adversarial ``<Task>-adv.json`` files.
        progress: show a progress bar (over tasks) when there are several.

    Returns:
        The summary written to ``result.json``: ``{run_name: {category: {task: eval.json dict}}}``; it
        holds every task of the run folder that has an ``eval.json``, not only the ones scored now.
    """
    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise FileNotFoundError(f"result directory {result_dir} does not exist")
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist")
    names = expand_tasks(list(tasks) if tasks else None, result_dir)
    if not names:
        raise FileNotFoundError(f"no <Task>/pred.json under {result_dir}; nothing to score")
    recorded = _recorded_fingerprints(result_dir)
    results = []
    with tqdm(names, desc="scoring", unit="task", disable=not progress or len(names) < 2) as bar:
        for task in bar:  # the bar closes before an error propagates, so messages are not interleaved
            annotation = load_annotation(data_dir, task, adv)
            predictions = load_predictions(result_dir, task)
            generated_on = load_annotation(data_dir, task) if adv else annotation  # -adv: made on <Task>.json
            _check_fingerprints(task, generated_on, predictions, recorded.get(task), result_dir)
            results.append(score_task(task, annotation, predictions))
    for scores in results:
        write_task_scores(result_dir, scores)
    return write_summary(result_dir)


__all__ = [
    "TASK_GROUPS",
    "TaskScores",
    "expand_tasks",
    "extract_option",
    "find_tasks",
    "load_annotation",
    "load_predictions",
    "normalize_answer",
    "score_answer",
    "score_run",
    "score_task",
    "write_task_scores",
]
