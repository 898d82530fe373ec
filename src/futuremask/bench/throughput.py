"""``futuremask bench --eval-throughput``: samples/s of ``futuremask eval --demo`` at several batch sizes.

Each batch size runs the whole offline demo benchmark (the demo VLM, every demo task) under each
policy, as ``futuremask eval --demo --batch-size N`` does, timed end to end (prompt building,
generation, writing ``pred.json``). The predictions of every batch size are compared with those of
the first: batching must not change a single answer.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .run import CLOCKS


def _predictions(run_dir: Path) -> dict[tuple[str, str], str]:
    out = {}
    for pred in sorted(run_dir.glob("*/pred.json")):
        for rec in json.loads(pred.read_text()):
            out[(pred.parent.name, str(rec["sample_id"]))] = rec["pred_response"]
    return out


def eval_throughput(
    batch_sizes: Sequence[int] = (1, 8),
    policies: Sequence[str] = ("causal", "future"),
    *,
    samples_per_task: int = 24,
    max_new_tokens: int = 8,
    clock: str = "cpu",
) -> list[dict]:
    """One record per (policy, batch size): ``seconds``, ``samples``, ``samples_per_s``, ``speedup``
    (over the first batch size) and ``identical`` (every prediction equals the first batch size's)."""
    from ..eval.data import load_tasks
    from ..eval.demo import generate_demo_data, load_demo_model
    from ..eval.runner import RunConfig, evaluate

    now = CLOCKS[clock]
    records = []
    with tempfile.TemporaryDirectory(prefix="fm-throughput-") as tmp:
        data_dir = Path(tmp) / "data"
        generate_demo_data(data_dir, samples_per_task=samples_per_task)
        tasks = load_tasks(data_dir, None)
        total = sum(len(t.samples) for t in tasks)
        model, processor = load_demo_model()
        for policy in policies:
            first = None
            for bs in batch_sizes:
                config = RunConfig(model="demo-vlm", policy=policy, max_new_tokens=max_new_tokens, batch_size=bs,
                                   overwrite=True, progress=False)
                start = now()
                (run_dir,) = evaluate(model, processor, tasks, [policy], Path(tmp) / f"bs{bs}", config)
                seconds = now() - start
                preds = _predictions(run_dir)
                first = first or (seconds, preds)
                records.append({
                    "policy": policy, "batch_size": bs, "samples": total, "seconds": seconds,
                    "samples_per_s": total / seconds, "speedup": first[0] / seconds,
                    "identical": preds == first[1], "clock": clock,
                })
    return records


def throughput_table(records: list[dict]) -> str:
    """Markdown table of :func:`eval_throughput` records."""
    out = ["| policy | batch size | samples | seconds | samples/s | x batch 1 | identical predictions |",
           "|---|---|---|---|---|---|---|"]
    for r in records:
        out.append(f"| {r['policy']} | {r['batch_size']} | {r['samples']} | {r['seconds']:.1f} | "
                   f"{r['samples_per_s']:.2f} | {r['speedup']:.2f} | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(out)
