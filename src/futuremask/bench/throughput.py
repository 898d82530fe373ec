"""``futuremask bench --eval-throughput``: samples/s of ``futuremask eval --demo`` at several batch sizes.

Each measurement runs the whole offline demo benchmark (the demo VLM, every demo task, the same
samples at every batch size) under one variant (a policy, with a merge or not), as ``futuremask eval
--demo --batch-size N`` does, timed end to end (prompt building, image loading, the processor,
generation, writing ``pred.json``).

* **Warm-up excluded**: before the timed rounds every variant runs once at every batch size on the
  first task's first samples, untimed, so the first timed run does not pay the process's cold start
  (lazy imports, first allocations, the tokenizer's caches).
* **Rounds**: ``repeats`` rounds visit every (variant, batch size) once, in an order rotated from round
  to round, so drift in the machine's load spreads over all of them; figures are medians over rounds.
* **Ratio**: ``speedup`` = median seconds of the first batch size / median seconds of this one, with the
  min and max of the same ratio taken round by round (``speedup_min``/``speedup_max``).
* **Against the stock model**: with ``causal`` among the variants, ``of_causal`` is a variant's speedup
  over ``causal``'s speedup at the same batch size. On a small model the stock model's own ratio is the
  bound (its forward pass and ``generate``'s set-up, not the mask), so this is the policy's share of it.
* **Identical**: every prediction of every round equals that of the first batch size in the first round.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..merge import Merge
from ..merge_spec import merge_spec
from ..policies import get_policy
from .run import CLOCKS, Variant, variants


def _predictions(run_dir: Path) -> dict[tuple[str, str], str]:
    out = {}
    for pred in sorted(run_dir.glob("*/pred.json")):
        for rec in json.loads(pred.read_text()):
            out[(pred.parent.name, str(rec["sample_id"]))] = rec["pred_response"]
    return out


def _runs(policies: Sequence[str], merges: Sequence[Merge | str | None]) -> list[Variant]:
    """The variants of ``policies`` x ``merges`` (``causal`` only when asked for)."""
    asked = {get_policy(p).name for p in policies}
    return [v for v in variants(policies, merges) if v.merge is not None or v.policy in asked]


def eval_throughput(
    batch_sizes: Sequence[int] = (1, 8),
    policies: Sequence[str] = ("causal", "future"),
    *,
    merges: Sequence[Merge | str | None] = (None,),
    repeats: int = 3,
    samples_per_task: int = 24,
    max_new_tokens: int = 8,
    clock: str = "cpu",
) -> list[dict]:
    """One record per (variant, batch size), variants first: ``seconds`` (median, ``_min``/``_max``),
    ``wall_s`` (median wall time), ``samples``, ``samples_per_s``, ``speedup`` (over the first batch
    size; ``speedup_min``/``_max`` round by round) and ``identical`` (see the module doc)."""
    from ..eval.data import load_tasks
    from ..eval.demo import generate_demo_data, load_demo_model
    from ..eval.runner import RunConfig, evaluate

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    now = CLOCKS[clock]
    runs = _runs(policies, merges)
    cells = [(v, bs) for v in runs for bs in batch_sizes]
    seconds: dict[tuple[Variant, int], list[float]] = {c: [] for c in cells}
    wall: dict[tuple[Variant, int], list[float]] = {c: [] for c in cells}
    identical = dict.fromkeys(cells, True)
    with tempfile.TemporaryDirectory(prefix="fm-throughput-") as tmp:
        data_dir = Path(tmp) / "data"
        generate_demo_data(data_dir, samples_per_task=samples_per_task)
        tasks = load_tasks(data_dir, None)
        total = sum(len(t.samples) for t in tasks)
        warm = [replace(tasks[0], samples=tasks[0].samples[: max(batch_sizes)])]
        model, processor = load_demo_model()

        def run(v: Variant, bs: int, on) -> Path:
            config = RunConfig(model="demo-vlm", policy=v.policy, merge=v.merge, max_new_tokens=max_new_tokens,
                               batch_size=bs, overwrite=True, progress=False)
            (run_dir,) = evaluate(model, processor, on, [v.policy], Path(tmp) / f"bs{bs}", config)
            return run_dir

        for v, bs in cells:
            run(v, bs, warm)
        reference: dict[Variant, dict] = {}
        for r in range(repeats):
            for v, bs in cells[r % len(cells):] + cells[: r % len(cells)]:
                start, start_wall = now(), time.perf_counter()
                run_dir = run(v, bs, tasks)
                seconds[(v, bs)].append(now() - start)
                wall[(v, bs)].append(time.perf_counter() - start_wall)
                preds = _predictions(run_dir)
                if r == 0 and bs == batch_sizes[0]:  # round 0 is in order: before the variant's other sizes
                    reference[v] = preds
                identical[(v, bs)] &= len(preds) == total and preds == reference[v]
    records = []
    causal = next((v for v in runs if v.policy == "causal" and v.merge is None), None)
    medians = {cell: statistics.median(times) for cell, times in seconds.items()}

    def speedup(v: Variant, bs: int) -> float:
        return medians[(v, batch_sizes[0])] / medians[(v, bs)]

    for v, bs in cells:
        rounds = [a / b for a, b in zip(seconds[(v, batch_sizes[0])], seconds[(v, bs)], strict=True)]
        records.append({
            "policy": v.policy, "merge": merge_spec(v.merge), "variant": v.label, "batch_size": bs, "samples": total,
            "seconds": medians[(v, bs)], "seconds_min": min(seconds[(v, bs)]), "seconds_max": max(seconds[(v, bs)]),
            "wall_s": statistics.median(wall[(v, bs)]), "samples_per_s": total / medians[(v, bs)],
            "speedup": speedup(v, bs), "speedup_min": min(rounds), "speedup_max": max(rounds),
            "of_causal": None if causal is None else speedup(v, bs) / speedup(causal, bs),
            "identical": identical[(v, bs)], "repeats": repeats, "clock": clock, "threads": torch.get_num_threads(),
        })
    return records


def throughput_table(records: list[dict]) -> str:
    """Markdown table of :func:`eval_throughput` records."""
    out = ["| variant | batch size | samples | seconds (median [min-max]) | samples/s | x first batch size "
           "(ratio of medians [rounds' min-max]) | x causal's ratio | wall s | identical predictions |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        out.append(f"| {r['variant']} | {r['batch_size']} | {r['samples']} | {r['seconds']:.2f} "
                   f"[{r['seconds_min']:.2f}-{r['seconds_max']:.2f}] | {r['samples_per_s']:.1f} | {r['speedup']:.2f} "
                   f"[{r['speedup_min']:.2f}-{r['speedup_max']:.2f}] | "
                   f"{'-' if r['of_causal'] is None else format(r['of_causal'], '.2f')} | {r['wall_s']:.2f} | "
                   f"{'yes' if r['identical'] else 'NO'} |")
    return "\n".join(out)
