"""Choose a policy per task on held-in (dev) samples and measure the choice on held-out samples only.

The procedure (``futuremask tune``), in this order:

1. **Split.** Each task's samples are shuffled with ``random.Random(f"{seed}:{task}")`` and cut into
   ``dev`` (the first ``round(n * dev_fraction)``) and ``heldout`` (the rest); the ids go to
   ``split.json`` and never overlap.
2. **Dev runs.** Every candidate (policy, merge) is run by the evaluation runner on the dev samples
   (``<out>/dev/<run>/``) and scored per sample with the official rules.
3. **Choice (dev scores only).** Per task, each candidate's change against ``causal`` gets a paired
   bootstrap interval (:func:`futuremask.eval.stats.paired_bootstrap`). The rule: a candidate is
   *eligible* when its interval lies above 0; the eligible candidate with the largest change wins, ties
   going to the one listed first; with no eligible candidate the task keeps ``causal`` (so ties and
   wins within noise are ``causal``). The *best single policy* is the candidate with the highest dev
   mean over tasks (ties: listed first, ``causal`` first of all). For comparison only, the *dev argmax*
   of each task is its candidate with the highest dev mean, significant or not (ties: listed first).
   ``policy_map.json`` is written now, before any held-out prediction exists.
4. **Held-out runs.** ``causal`` and the best single policy on every task, and each task's chosen
   candidate and dev argmax on that task, on the held-out samples only (``<out>/heldout/<run>/``).
5. **Report** (``tune.json``, ``tune.md``): per task the dev evidence and the held-out change of the
   chosen candidate and of the dev argmax; overall the held-out mean of the map against ``causal``,
   against the best single policy and against the dev-argmax map, with intervals that resample within
   each task.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..io import write_json_atomic, write_text_atomic
from ..merge import Merge, PolicyMerge
from ..merge_spec import merge_spec, parse_merge_spec
from .data import Task
from .metrics import scoring_rule
from .runner import RunConfig, evaluate
from .scoring import load_annotation, load_predictions, score_task
from .shared import id_key, sample_scores
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED, Delta, paired_bootstrap, stratified_bootstrap


class Candidate(PolicyMerge):
    """One thing to choose: a policy and an optional merge (:class:`~futuremask.merge.PolicyMerge`)."""

    def to_dict(self) -> dict[str, str | None]:
        """``{"policy", "merge"}``, the merge as its word (``kernel``, ``kernel-k5``): policy_map.json's entries."""
        return {"policy": self.policy, "merge": merge_spec(self.merge)}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Candidate:
        """The candidate :meth:`to_dict` wrote (the merge word read back with :func:`parse_merge_spec`)."""
        return cls(entry["policy"], parse_merge_spec(entry.get("merge")))


BASELINE = Candidate("causal")


def candidates(policies: Sequence[str], merges: Sequence[Merge | str | None]) -> list[Candidate]:
    """``causal`` first, then every (policy, merge) in the given order; ``causal`` takes no merge (it is exact)."""
    out = [BASELINE]
    for policy in policies:
        for merge in ([None] if policy == "causal" else merges):
            if Candidate(policy, merge) not in out:
                out.append(Candidate(policy, merge))
    return out


# --- split ----------------------------------------------------------------------------------------------


def split_ids(task: Task, dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(dev ids, held-out ids)`` of one task, each in the data file's order (module docstring, step 1)."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    ids = [str(s.sample_id) for s in task.samples]
    n_dev = round(len(ids) * dev_fraction)
    if not 0 < n_dev < len(ids):
        raise ValueError(
            f"{task.name}: {len(ids)} samples cannot be split {dev_fraction:g} dev / rest held-out with both parts "
            "non-empty; use more samples or another --dev-fraction"
        )
    shuffled = list(ids)
    random.Random(f"{seed}:{task.name}").shuffle(shuffled)
    dev = set(shuffled[:n_dev])
    return [i for i in ids if i in dev], [i for i in ids if i not in dev]


def is_accuracy(task: Task) -> bool:
    """Whether the task is scored by accuracy (0/1 per sample), so McNemar's test applies."""
    return scoring_rule(task.name, task.question_type) != "rouge"


def _subset(task: Task, ids: Sequence[str]) -> Task:
    keep = set(ids)
    return replace(task, samples=[s for s in task.samples if str(s.sample_id) in keep])


# --- runs and per-sample scores -------------------------------------------------------------------------


def _run(model, processor, wanted: Mapping[Candidate, list[Task]], out: Path, config: RunConfig) -> dict[Candidate, Path]:
    """Run each candidate on its tasks with the evaluation runner; return its run folder."""
    folders = {}
    for cand, tasks in wanted.items():
        cfg = replace(config, merge=cand.merge)
        (folders[cand],) = evaluate(model, processor, tasks, [cand.policy], out, cfg)
    return folders


def _scores(data_dir, run_dir: Path, task: Task, ids: Sequence[str], adv: bool) -> list[float]:
    """Official per-sample scores of ``ids`` (in that order) from a run folder's predictions."""
    annotation = load_annotation(data_dir, task.name, adv)
    keep = set(ids)
    data = [s for s in annotation["data"] if str(s.get("sample_id")) in keep]
    preds = [r for r in load_predictions(run_dir, task.name) if str(r.get("sample_id")) in keep]
    scored = sample_scores(score_task(task.name, {**annotation, "data": data}, preds).sample_scores, None)
    return [scored[(id_key(i), None)] for i in ids]


# --- the choice (dev scores only) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """A task's choice: the winner, why, the dev argmax, and every candidate's dev change against causal."""

    chosen: Candidate
    reason: str
    dev: dict[str, Delta]  # candidate label -> change against causal on dev
    argmax: Candidate  # the highest dev mean, significant or not


def choose(
    dev_scores: Mapping[str, Mapping[Candidate, Sequence[float]]],
    cands: Sequence[Candidate],
    *,
    accuracy: Mapping[str, bool] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, Choice]:
    """Apply the rule of the module docstring (step 3) to ``{task: {candidate: dev scores [n]}}``.

    ``accuracy``: the tasks scored 0/1, which also get McNemar's p-value (it does not enter the rule).
    """
    out = {}
    for task, scores in dev_scores.items():
        base, mcnemar = scores[BASELINE], bool((accuracy or {}).get(task))
        deltas = {c: paired_bootstrap(scores[c], base, resamples=resamples, seed=seed, mcnemar=mcnemar)
                  for c in cands if c != BASELINE}
        eligible = [c for c in cands if c in deltas and deltas[c].low > 0]
        if eligible:
            best = max(eligible, key=lambda c: deltas[c].delta)  # max keeps the first of equal changes
            reason = f"+{deltas[best].delta * 100:.2f} on dev, interval above 0"
        else:
            best, reason = BASELINE, "no candidate's dev interval lies above 0"
        argmax = max(cands, key=lambda c: 0.0 if c == BASELINE else deltas[c].delta)
        out[task] = Choice(best, reason, {c.label: d for c, d in deltas.items()}, argmax)
    return out


def best_single(dev_scores: Mapping[str, Mapping[Candidate, Sequence[float]]], cands: Sequence[Candidate]) -> Candidate:
    """The candidate with the highest dev mean over tasks (equal weight per task); ties: listed first."""

    def mean(c: Candidate) -> float:
        return sum(sum(s[c]) / len(s[c]) for s in dev_scores.values()) / len(dev_scores)

    return max(cands, key=mean)


# --- the procedure --------------------------------------------------------------------------------------


def tune(
    model,
    processor,
    tasks: Sequence[Task],
    data_dir: str | os.PathLike,
    cands: Sequence[Candidate],
    out_dir: str | os.PathLike,
    config: RunConfig,
    *,
    dev_fraction: float = 0.5,
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
) -> dict[str, Any]:
    """Run the procedure of the module docstring; return what ``tune.json`` holds.

    Args:
        tasks: loaded tasks (all their samples are split).
        data_dir: the data root (for official scoring).
        cands: from :func:`candidates` (``causal`` first).
        config: runner settings; its ``policy`` and ``merge`` are set per candidate.
        seed: the split's seed, also the bootstrap's.
    """
    out = Path(out_dir)
    if not cands or cands[0] != BASELINE:
        raise ValueError("the candidates must start with causal, the baseline")
    split = {t.name: split_ids(t, dev_fraction, seed) for t in tasks}  # every task checked before any run
    write_json_atomic(out / "split.json", {"seed": seed, "dev_fraction": dev_fraction,
                                           "tasks": {k: {"dev": d, "heldout": h} for k, (d, h) in split.items()}})
    by_name = {t.name: t for t in tasks}
    dev_tasks = [_subset(t, split[t.name][0]) for t in tasks]
    dev_runs = _run(model, processor, {c: dev_tasks for c in cands}, out / "dev", config)
    dev_scores = {t.name: {c: _scores(data_dir, dev_runs[c], t, split[t.name][0], config.adv) for c in cands}
                  for t in tasks}
    accuracy = {t.name: is_accuracy(t) for t in tasks}
    choices = choose(dev_scores, cands, accuracy=accuracy, resamples=resamples, seed=seed)
    single = best_single(dev_scores, cands)
    policy_map = {task: ch.chosen.to_dict() for task, ch in choices.items()}
    write_json_atomic(out / "policy_map.json", policy_map)

    wanted: dict[Candidate, list[Task]] = {}
    for name, ch in choices.items():
        for cand in dict.fromkeys([BASELINE, single, ch.chosen, ch.argmax]):
            wanted.setdefault(cand, []).append(_subset(by_name[name], split[name][1]))
    held_runs = _run(model, processor, wanted, out / "heldout", config)
    held = {c: {t.name: _scores(data_dir, held_runs[c], by_name[t.name], split[t.name][1], config.adv)
                for t in ts} for c, ts in wanted.items()}
    result = _summary(choices, single, held, dev_runs, held_runs, split, accuracy, resamples, seed)
    result["policy_map"] = policy_map
    result["settings"] = {"dev_fraction": dev_fraction, "seed": seed, "resamples": resamples,
                          "candidates": [c.to_dict() for c in cands], "model": config.model}
    write_json_atomic(out / "tune.json", result)
    write_text_atomic(out / "tune.md", tune_markdown(result))
    return result


def _summary(choices, single, held, dev_runs, held_runs, split, accuracy, resamples, seed) -> dict[str, Any]:
    tasks, per_task = list(choices), {}
    map_scores = {t: held[choices[t].chosen][t] for t in tasks}
    argmax_scores = {t: held[choices[t].argmax][t] for t in tasks}
    for t in tasks:
        ch = choices[t]

        def change(scores, t=t):
            return paired_bootstrap(scores, held[BASELINE][t], resamples=resamples, seed=seed,
                                    mcnemar=accuracy[t]).to_dict()

        per_task[t] = {
            "chosen": ch.chosen.to_dict(), "reason": ch.reason, "dev_argmax": ch.argmax.to_dict(),
            "dev": {label: d.to_dict() for label, d in ch.dev.items()},
            "n_dev": len(split[t][0]), "n_heldout": len(split[t][1]),
            "heldout_causal": _mean(held[BASELINE][t]), "heldout_map": _mean(map_scores[t]),
            "heldout_map_vs_causal": change(map_scores[t]),
            "heldout_argmax_vs_causal": change(argmax_scores[t]),
        }

    def versus(a, b):
        return stratified_bootstrap([(a[t], b[t]) for t in tasks], resamples=resamples, seed=seed).to_dict()

    overall = {
        "best_single": single.to_dict(),
        "heldout_mean": {"map": _avg(map_scores), "causal": _avg(held[BASELINE]), "best_single": _avg(held[single]),
                         "dev_argmax": _avg(argmax_scores)},
        "map_vs_causal": versus(map_scores, held[BASELINE]),
        "map_vs_best_single": versus(map_scores, held[single]),
        "best_single_vs_causal": versus(held[single], held[BASELINE]),
        "map_vs_dev_argmax": versus(map_scores, argmax_scores),
        "dev_argmax_vs_causal": versus(argmax_scores, held[BASELINE]),
    }
    runs = {"dev": {c.label: str(p) for c, p in dev_runs.items()},
            "heldout": {c.label: str(p) for c, p in held_runs.items()}}
    return {"tasks": per_task, "overall": overall, "runs": runs}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _avg(per_task: Mapping[str, Sequence[float]]) -> float:
    return sum(_mean(v) for v in per_task.values()) / len(per_task)


def _delta_text(d: Mapping[str, Any]) -> str:
    mark = " *" if d["significant"] else ""
    p = f", McNemar p={d['p_mcnemar']:.3f}" if d.get("p_mcnemar") is not None else ""
    return f"{d['delta'] * 100:+.2f} [{d['low'] * 100:+.2f}, {d['high'] * 100:+.2f}]{mark}{p}"


def tune_markdown(result: Mapping[str, Any]) -> str:
    """``tune.md``: the choice per task with its dev evidence, and the held-out comparison."""
    s, o = result["settings"], result["overall"]
    label = Candidate.from_dict(o["best_single"]).label
    lines = [
        "# futuremask tune", "",
        f"Model `{s['model']}`; dev fraction {s['dev_fraction']}, seed {s['seed']}, {s['resamples']} bootstrap "
        "resamples. Changes in points against `causal` with 95% paired bootstrap intervals; * = the interval "
        "excludes 0. The choice uses dev scores only.", "",
        "| Task | n dev / held-out | chosen | why | held-out change (map vs causal) | dev argmax | its held-out change |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, row in result["tasks"].items():
        chosen, argmax = Candidate.from_dict(row["chosen"]).label, Candidate.from_dict(row["dev_argmax"]).label
        lines.append(f"| {task} | {row['n_dev']} / {row['n_heldout']} | {chosen} | {row['reason']} | "
                     f"{_delta_text(row['heldout_map_vs_causal'])} | {argmax} | "
                     f"{_delta_text(row['heldout_argmax_vs_causal'])} |")
    mean = o["heldout_mean"]
    lines += [
        "", "Dev changes against causal per candidate:", "",
        "| Task | " + " | ".join(next(iter(result["tasks"].values()))["dev"]) + " |",
        "|---|" + "---|" * len(next(iter(result["tasks"].values()))["dev"]),
    ]
    for task, row in result["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(_delta_text(d) for d in row["dev"].values()) + " |")
    lines += [
        "", f"Held-out mean over tasks: map {mean['map'] * 100:.2f}, causal {mean['causal'] * 100:.2f}, "
        f"best single policy on dev (`{label}`) {mean['best_single'] * 100:.2f}, dev-argmax map "
        f"{mean['dev_argmax'] * 100:.2f}.", "",
        f"* map vs causal: {_delta_text(o['map_vs_causal'])}",
        f"* map vs best single (`{label}`): {_delta_text(o['map_vs_best_single'])}",
        f"* best single vs causal: {_delta_text(o['best_single_vs_causal'])}",
        f"* dev-argmax map (no significance rule) vs causal: {_delta_text(o['dev_argmax_vs_causal'])}",
        f"* map vs dev-argmax map: {_delta_text(o['map_vs_dev_argmax'])}",
        "", "Category-level intervals resample each task's samples within the task.",
    ]
    return "\n".join(lines) + "\n"


def read_policy_map(path: str | os.PathLike) -> dict[str, Candidate]:
    """``policy_map.json`` (``{task: {"policy", "merge"}}``) as candidates, policy names and merge words checked."""
    from ..policies import get_policy

    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the policy map ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected {{task: {{'policy': NAME, 'merge': null | MERGE}}}} (MERGE: kernel, "
                         "kernel-k5-mean, lse-p2, ...)")
    out = {}
    for task, entry in raw.items():
        if not isinstance(entry, dict) or "policy" not in entry:
            raise ValueError(f"{path}: entry {task!r} must be {{'policy': NAME, 'merge': null | MERGE}}")
        try:
            out[task] = Candidate(get_policy(entry["policy"]).name, parse_merge_spec(entry.get("merge")))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: entry {task!r}: {err}") from None
    return out


def run_policy_map(model, processor, tasks: Sequence[Task], policy_map: Mapping[str, Candidate], out_dir,
                   config: RunConfig) -> dict[str, Path]:
    """Run each task under its mapped candidate; return ``{task: run folder}``."""
    missing = [t.name for t in tasks if t.name not in policy_map]
    if missing:
        raise ValueError(f"the policy map has no entry for tasks {missing}; add them or pass --tasks")
    wanted: dict[Candidate, list[Task]] = {}
    for t in tasks:
        wanted.setdefault(policy_map[t.name], []).append(t)
    folders = _run(model, processor, wanted, Path(out_dir), config)
    return {t.name: folders[policy_map[t.name]] for t in tasks}


__all__ = ["BASELINE", "Candidate", "Choice", "best_single", "candidates", "choose", "read_policy_map",
           "run_policy_map", "split_ids", "tune", "tune_markdown"]
