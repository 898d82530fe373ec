"""`futuremask report`: table content, bold best, deltas to causal, category means, paper rows, PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from PIL import Image

from futuremask.cli import score as cli_score
from futuremask.eval.report import build_report, load_runs
from futuremask.eval.report_plot import plot_report
from futuremask.eval.summary import write_summary

# run folder -> (policy, merge, {task: (metric, score)})
RUNS = {
    "tiny-causal": ("causal", None, {"ActionLocalization": 0.23, "CLEVR-Change": 0.166, "DemoColor": 0.5}),
    "tiny-future": ("future", None, {"ActionLocalization": 0.25, "CLEVR-Change": 0.187, "DemoColor": 0.4}),
    "tiny-v2v-kernel": (
        "future_v2v",
        "kernel",
        {"ActionLocalization": 0.255, "CLEVR-Change": 0.177, "DemoColor": 0.5},
    ),
}


def _make_run(outputs: Path, name: str, policy: str, merge: str | None, scores: dict[str, float]) -> None:
    run = outputs / name
    for task, value in scores.items():
        metric = "Rouge-L f" if task == "CLEVR-Change" else "Accuracy"
        eval_result = {
            metric: value,
            "image_quantity_level-Accuracy": {"Few": value, "Medium": 0, "Many": 0},
            "image_quantity_level-Result": {"Few": [value * 10, 10], "Medium": [0, 0], "Many": [0, 0]},
        }
        (run / task).mkdir(parents=True)
        (run / task / "eval.json").write_text(json.dumps(eval_result), encoding="utf-8")
    meta = {"model": "tiny-llava", "policy": policy, "merge": merge, "backend": "sdpa"}
    (run / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    write_summary(run)


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    for name, (policy, merge, scores) in RUNS.items():
        _make_run(tmp_path, name, policy, merge, scores)
    return tmp_path


def _row(text: str, first_cell: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))


def test_table_bold_best_and_deltas(outputs: Path) -> None:
    text = build_report(outputs)
    assert "## tiny-llava" in text
    assert _row(text, "Task") == "| Task | Metric | causal | future | future_v2v+kernel |"
    assert _row(text, "ActionLocalization") == (
        "| ActionLocalization | Acc | 23.00 | 25.00 (+2.00) | **25.50** (+2.50) |"
    )
    assert (
        _row(text, "CLEVR-Change") == "| CLEVR-Change | ROUGE-L | 16.60 | **18.70** (+2.10) | 17.70 (+1.10) |"
    )
    # ties are all bold; a drop shows a negative delta
    assert _row(text, "DemoColor") == "| DemoColor | Acc | **50.00** | 40.00 (-10.00) | **50.00** (+0.00) |"
    # tasks in MileBench category order, non-MileBench tasks last
    order = [
        line.split(" | ")[0][2:] for line in text.splitlines() if " | Acc" in line or " | ROUGE-L" in line
    ]
    assert order == ["ActionLocalization", "CLEVR-Change", "DemoColor"]


def test_category_means(outputs: Path) -> None:
    text = build_report(outputs)
    assert (
        _row(text, "Realistic Temporal")
        == "| Realistic Temporal | 1 | 23.00 | 25.00 (+2.00) | **25.50** (+2.50) |"
    )
    assert _row(text, "Other") == "| Other | 1 | **50.00** | 40.00 (-10.00) | **50.00** (+0.00) |"
    # All: causal (23 + 16.6 + 50) / 3 = 29.87; future (25 + 18.7 + 40) / 3 = 27.90; v2v (25.5 + 17.7 + 50) / 3
    # = 31.07. Deltas are taken between the shown (rounded) values.
    assert _row(text, "All") == "| All | 3 | 29.87 | 27.90 (-1.97) | **31.07** (+1.20) |"


def test_means_use_tasks_common_to_all_runs(outputs: Path) -> None:
    _make_run(outputs, "tiny-v2t", "future_v2t", None, {"ActionLocalization": 0.3})
    text = build_report(outputs)
    assert _row(text, "Task") == "| Task | Metric | causal | future | future_v2v+kernel | future_v2t |"
    # only ActionLocalization is scored by every run
    assert _row(text, "All") == "| All | 1 | 23.00 | 25.00 (+2.00) | 25.50 (+2.50) | **30.00** (+7.00) |"
    assert (
        _row(text, "DemoColor") == "| DemoColor | Acc | **50.00** | 40.00 (-10.00) | **50.00** (+0.00) | – |"
    )


def test_no_causal_run_means_no_deltas(tmp_path: Path) -> None:
    _make_run(tmp_path, "a", "future", None, {"TQA": 0.4})
    _make_run(tmp_path, "b", "mma", None, {"TQA": 0.3})
    text = build_report(tmp_path)
    assert _row(text, "TQA") == "| TQA | Acc | **40.00** | 30.00 |"
    assert "No plain `causal` run" in text


def test_all_equal_row_has_no_bold(tmp_path: Path) -> None:
    _make_run(tmp_path, "a", "causal", None, {"TQA": 0.0})
    _make_run(tmp_path, "b", "future", None, {"TQA": 0.0})
    assert _row(build_report(tmp_path), "TQA") == "| TQA | Acc | 0.00 | 0.00 (+0.00) |"


def test_paper_rows(outputs: Path) -> None:
    assert "Paper reference" not in build_report(outputs)
    text = build_report(outputs, paper=True)
    assert "Paper reference: LLaVA-1.5-7B" in text
    assert _row(text, "ActionL (ActionLocalization)") == (
        "| ActionL (ActionLocalization) | Acc | 23.00 | 25.00 (+2.00) | **25.50** (+2.50) | 25.00 (+2.00) |"
    )
    assert (
        _row(text, "TQA (TQA)")
        == "| TQA (TQA) | Acc | 32.00 | **40.00** (+8.00) | 38.50 (+6.50) | 38.50 (+6.50) |"
    )
    assert _row(text, "Moving (task unspecified)").startswith("| Moving (task unspecified) | Acc | 49.00 |")


def test_missing_outputs_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no scored runs"):
        load_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_runs(tmp_path / "nope")


def test_plot_is_a_real_png(outputs: Path, tmp_path: Path) -> None:
    path = plot_report(outputs, tmp_path / "chart.png", paper=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with Image.open(path) as image:
        width, height = image.size
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert width >= 720 and height > 2 * 3.6 * 120 * 0.9  # two panels (runs + paper) at 120 dpi
    assert colors is not None and len(colors) > 20  # bars, text and antialiasing, not a blank canvas


def test_report_command_writes_files(outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli_score.register(parser.add_subparsers())
    args = parser.parse_args(["report", str(outputs), "--paper"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    report = (outputs / "report.md").read_text(encoding="utf-8")
    assert report in printed and "**25.50** (+2.50)" in report
    assert (outputs / "report.png").read_bytes()[:4] == b"\x89PNG"
