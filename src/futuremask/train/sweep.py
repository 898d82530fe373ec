"""Train under several policies, evaluate every trained model under every policy, tabulate.

The comparison is controlled: every training policy starts from the same initial weights (same seed),
sees the same examples in the same order and runs the same number of steps. Each trained model is then
run by the evaluation runner (greedy generation) under each inference policy and scored with the
official MileBench rules, next to two reference levels per task:

* ``uniform``: the expected accuracy of picking a choice at random (multiple choice only);
* ``constant``: the score of always answering the training set's most frequent answer for that task
  (what a model that ignores the images and the question can reach).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..eval.data import Task, load_tasks
from ..eval.runner import RunConfig, evaluate
from ..eval.scoring import score_run, score_task
from ..io import read_json, write_json_atomic, write_text_atomic
from .trainer import TrainConfig, save_checkpoint, train


@dataclass
class Reference:
    """Reference levels of one task: ``metric`` name, ``uniform`` (None for open-ended) and ``constant``."""

    metric: str
    uniform: float | None
    constant: float
    constant_answer: str


def reference_levels(tasks: Sequence[Task], train_examples: Sequence[dict[str, Any]]) -> dict[str, Reference]:
    """Chance levels of each evaluation task (see the module docstring)."""
    by_task: dict[str, Counter] = {}
    for ex in train_examples:
        by_task.setdefault(ex.get("task", ""), Counter())[ex["answer"]] += 1
    levels: dict[str, Reference] = {}
    for task in tasks:
        answers = by_task.get(task.name) or Counter(s.response for s in task.samples)
        constant = answers.most_common(1)[0][0]
        annotation = {"meta_data": {"question_type": task.question_type},
                      "data": [s.raw for s in task.samples]}
        preds = [{"sample_id": s.sample_id, "pred_response": constant, "gt_response": s.response}
                 for s in task.samples]
        scores = score_task(task.name, annotation, preds)
        uniform = None
        if task.question_type == "multi-choice":
            uniform = sum(1.0 / len(s.choice_list or [None]) for s in task.samples) / len(task.samples)
        levels[task.name] = Reference(scores.metric, uniform, scores.score, constant)
    return levels


def task_scores(result_dir: str | os.PathLike) -> dict[str, float]:
    """``{task: score}`` from the ``<Task>/eval.json`` files of a scored run folder."""
    out = {}
    for path in sorted(Path(result_dir).glob("*/eval.json")):
        payload = read_json(path, dict, "task scores (eval.json)")
        out[path.parent.name] = float(next(iter(payload.values())))
    return out


def run_sweep(
    make_model: Callable[[], tuple[Any, Any]],
    train_examples: list[dict[str, Any]],
    eval_data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    train_policies: Sequence[str] = ("causal", "mma", "future"),
    eval_policies: Sequence[str] = ("causal", "future", "future_v2v", "future_v2t", "mma"),
    eval_tasks: list[str] | None = None,
    eval_limit: int | None = None,
    max_new_tokens: int = 16,
    eval_batch_size: int = 16,
) -> dict[str, Any]:
    """Train one model per policy in ``train_policies`` and evaluate each under ``eval_policies``.

    Args:
        make_model: returns a fresh ``(model, processor)``, identical on every call.
        train_examples: the SFT examples (same for every policy).
        eval_data_dir: MileBench-format evaluation data (keep it apart from the training data).
        out_dir: receives ``<policy>/`` checkpoints, ``eval/<policy>/`` runs and ``sweep.json`` / ``sweep.md``.
        config: optimisation settings; its ``policy`` is replaced per run.
        eval_tasks, eval_limit: which evaluation tasks, and the first ``eval_limit`` samples of each.
        max_new_tokens, eval_batch_size: generation settings of the evaluation.

    Returns:
        The ``sweep.json`` payload: settings, losses, reference levels and
        ``scores[train_policy][eval_policy][task]``.
    """
    out = Path(out_dir)
    tasks = load_tasks(eval_data_dir, eval_tasks, limit=eval_limit)
    references = reference_levels(tasks, train_examples)
    result: dict[str, Any] = {
        "config": asdict(config), "train_examples": len(train_examples),
        "eval_data_dir": str(eval_data_dir), "eval_limit": eval_limit,
        "references": {k: asdict(v) for k, v in references.items()}, "runs": {}, "scores": {},
    }
    for policy in train_policies:
        model, processor = make_model()
        cfg = replace(config, policy=policy)
        start = time.monotonic()
        res = train(model, processor, train_examples, cfg)
        seconds = time.monotonic() - start
        save_checkpoint(model, processor, out / policy, {"config": asdict(cfg), "losses": res.losses,
                                                        "seconds": seconds, "examples": len(train_examples)})
        run_cfg = RunConfig(model=policy, policy=policy, backend=config.backend, max_new_tokens=max_new_tokens,
                            batch_size=eval_batch_size, overwrite=True)
        runs = evaluate(model, processor, tasks, list(eval_policies), out / "eval" / policy, run_cfg)
        scores = {}
        for eval_policy, run_dir in zip(eval_policies, runs, strict=True):
            score_run(eval_data_dir, run_dir, [t.name for t in tasks], progress=False)
            scores[eval_policy] = task_scores(run_dir)
        result["runs"][policy] = {"losses": res.losses, "seconds": round(seconds, 1),
                                  "params": sum(p.numel() for p in model.parameters())}
        result["scores"][policy] = scores
        write_json_atomic(out / "sweep.json", result, indent=2)
    write_text_atomic(out / "sweep.md", sweep_markdown(result))
    return result


def sweep_markdown(result: dict[str, Any]) -> str:
    """The sweep as Markdown: one table per task, rows = training policy, columns = inference policy."""
    refs = result["references"]
    lines: list[str] = []
    for task, ref in refs.items():
        uniform = f"uniform {100 * ref['uniform']:.1f}, " if ref["uniform"] is not None else ""
        lines.append(f"**{task}** ({ref['metric']} x100; chance: {uniform}constant "
                     f"'{ref['constant_answer']}' {100 * ref['constant']:.1f})")
        lines.append("")
        eval_policies = list(next(iter(result["scores"].values())).keys()) if result["scores"] else []
        lines.append("| train \\ eval | " + " | ".join(eval_policies) + " |")
        lines.append("|---" * (len(eval_policies) + 1) + "|")
        for train_policy, per_eval in result["scores"].items():
            cells = [f"{100 * per_eval[p].get(task, float('nan')):.1f}" for p in eval_policies]
            lines.append(f"| {train_policy} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Mean over tasks (x100):")
    lines.append("")
    if result["scores"]:
        eval_policies = list(next(iter(result["scores"].values())).keys())
        lines.append("| train \\ eval | " + " | ".join(eval_policies) + " |")
        lines.append("|---" * (len(eval_policies) + 1) + "|")
        for train_policy, per_eval in result["scores"].items():
            cells = []
            for p in eval_policies:
                values = [per_eval[p][t] for t in refs if t in per_eval[p]]
                cells.append(f"{100 * sum(values) / max(len(values), 1):.1f}")
            lines.append(f"| {train_policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["Reference", "reference_levels", "run_sweep", "sweep_markdown", "task_scores"]
