"""`futuremask report` intervals: changes against causal over shared samples, in the table, JSON and PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from futuremask.cli import score as cli_score
from futuremask.eval.report import build_report, load_runs
from futuremask.eval.report_plot import _model_series
from futuremask.eval.stats import mcnemar_from_counts, paired_bootstrap, stratified_bootstrap
from futuremask.eval.summary import write_summary

RESAMPLES = 3000
N = 40
RNG = np.random.default_rng(5)
CAUSAL_ACC = (RNG.random(N) < 0.5).astype(int)
ROUGE = RNG.random(N).round(3)
# mma: wins 12 accuracy samples causal got wrong, loses none (a real change); future: the same as causal
MMA_ACC = CAUSAL_ACC.copy()
MMA_ACC[np.flatnonzero(CAUSAL_ACC == 0)[:12]] = 1
MMA_ROUGE = (ROUGE + RNG.normal(0, 0.05, N)).clip(0, 1).round(3)
MISSING = {5, 17}  # samples the future run never scored on ActionLocalization
SHARED = [i for i in range(N) if i not in MISSING]  # what every run of ActionLocalization holds


def _run(outputs: Path, name: str, policy: str, acc, rouge, skip=()) -> None:
    run = outputs / name
    for task, values, metric in (("ActionLocalization", acc, "Accuracy"), ("CLEVR-Change", rouge, "Rouge-L f")):
        ids = [i for i in range(N) if not (task == "ActionLocalization" and i in skip)]
        scores = [{"id": str(i), "score": str(values[i])} for i in ids]
        (run / task).mkdir(parents=True)
        (run / task / "eval_score.json").write_text(json.dumps(scores))
        mean = float(np.mean([values[i] for i in ids]))
        (run / task / "eval.json").write_text(json.dumps({metric: mean}))
    (run / "run.json").write_text(json.dumps({"model": "m", "policy": policy, "merge": None, "backend": "sdpa"}))
    write_summary(run)


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    _run(tmp_path, "m__causal", "causal", CAUSAL_ACC, ROUGE)
    _run(tmp_path, "m__future", "future", CAUSAL_ACC, ROUGE, skip=MISSING)
    _run(tmp_path, "m__mma", "mma", MMA_ACC, MMA_ROUGE)
    return tmp_path


def _cells(text: str, first: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(f"| {first} |") and "[" in line]
    return [c.strip() for c in rows[0].strip("|").split("|")][1:]


def test_table_gives_each_change_with_its_interval_over_shared_samples(outputs: Path):
    text = build_report(outputs, resamples=RESAMPLES, seed=4)
    future, mma = _cells(text, "ActionLocalization")
    assert future == "+0.00 [+0.00, +0.00] p=1"
    # every run is compared on the samples all runs of the task share, as the score table is
    d = paired_bootstrap(MMA_ACC[SHARED], CAUSAL_ACC[SHARED], resamples=RESAMPLES, seed=4)
    wins = int(((MMA_ACC == 1) & (CAUSAL_ACC == 0))[SHARED].sum())
    p = mcnemar_from_counts(wins, 0)
    assert mma == f"+{d.delta * 100:.2f} [{d.low * 100:+.2f}, {d.high * 100:+.2f}] * p={p:.3g}"
    assert d.delta == pytest.approx(wins / len(SHARED))
    _, mma_rouge = _cells(text, "CLEVR-Change")
    r = paired_bootstrap(MMA_ROUGE, ROUGE, resamples=RESAMPLES, seed=4)
    assert mma_rouge.startswith(f"{r.delta * 100:+.2f} [{r.low * 100:+.2f}, {r.high * 100:+.2f}]")
    assert "p=" not in mma_rouge  # McNemar only on accuracy tasks
    _, mma_all = _cells(text, "mean: All")
    c = stratified_bootstrap([(MMA_ACC[SHARED], CAUSAL_ACC[SHARED]), (MMA_ROUGE, ROUGE)], resamples=RESAMPLES, seed=4)
    assert mma_all.startswith(f"{c.delta * 100:+.2f} [{c.low * 100:+.2f}, {c.high * 100:+.2f}]")


def test_report_command_writes_json_and_png_with_error_bars(outputs: Path, capsys):
    args = argparse.Namespace(outputs_dir=str(outputs), paper=False, output=None, plot=None, no_plot=False,
                              resamples=500, seed=0)
    assert cli_score.run_report(args) == 0
    data = json.loads((outputs / "report.json").read_text())["m"]
    changes = data["changes"]
    assert changes["baseline"] == "m__causal" and changes["resamples"] == 500
    cell = changes["tasks"]["ActionLocalization"]["m__mma"]
    wins = int(((MMA_ACC == 1) & (CAUSAL_ACC == 0))[SHARED].sum())
    assert cell["significant"] and cell["n"] == len(SHARED)
    assert cell["p_mcnemar"] == pytest.approx(mcnemar_from_counts(wins, 0))
    assert changes["tasks"]["ActionLocalization"]["m__future"]["n"] == len(SHARED)
    assert changes["tasks"]["CLEVR-Change"]["m__mma"]["n"] == N
    assert set(changes["categories"]) == {"Realistic Temporal", "Realistic Semantic", "All"}
    assert Image.open(outputs / "report.png").format == "PNG"
    groups, series, _ = _model_series(load_runs(outputs), 500, 0)
    bars = dict((label, deltas) for label, _, deltas in series)
    assert bars["causal"] is None  # no error bar on the baseline
    assert bars["mma"][groups.index("ActionLocalization")].to_dict() == cell


def test_runs_without_per_sample_scores_get_no_interval(outputs: Path):
    for path in (outputs / "m__mma").glob("*/eval_score.json"):
        path.unlink()
    text = build_report(outputs, resamples=200)
    future, mma = _cells(text, "ActionLocalization")
    assert future.startswith("+0.00 [") and mma == "–"
