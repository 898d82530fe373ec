"""Evaluation runs you can trust: no stale or mixed results, validation before work, clear errors.

Each test drives ``futuremask eval`` / ``score`` / ``report`` as a user would, with a tiny saved
checkpoint, and asserts the numbers, the files left behind, the exit code and the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from futuremask.cli import eval as cli_eval
from futuremask.cli import main
from futuremask.eval import runner
from futuremask.eval.demo import DEMO_WORDS, generate_demo_data
from futuremask.io import FolderLock
from futuremask.tiny import tiny_llava

TASKS = ["DemoColor", "DemoCount"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    model, processor = tiny_llava(words=list(DEMO_WORDS), seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _data(root: Path, samples: int) -> Path:
    generate_demo_data(root, samples_per_task=samples, seed=0, tasks=TASKS)
    return root


def _eval(data: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--data-dir", str(data), "--model", str(ckpt), "--output-dir", str(out),
                 "--max-new-tokens", "3", "--batch-size", "2", "--no-progress", *extra])


def _err(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("futuremask")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _eval_score(run: Path, task: str) -> dict[str, float]:
    return {r["id"]: float(r["score"]) for r in json.loads((run / task / "eval_score.json").read_text())}


def test_eval_table_shows_only_its_runs_and_report_compares_on_shared_samples(ckpt, tmp_path, capsys):
    small, full, out = _data(tmp_path / "d2", 2), _data(tmp_path / "d4", 4), tmp_path / "out"
    assert _eval(small, ckpt, out, "--policy", "future") == 0  # a 2-sample run left in the folder
    capsys.readouterr()
    assert _eval(full, ckpt, out, "--policy", "causal", "mma") == 0
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| Task |"))
    assert header == "| Task | Metric | causal | mma |"  # the stale future run is not mixed in
    assert "samples differ" not in table

    assert main(["report", str(out), "--no-plot"]) == 0
    report = capsys.readouterr().out
    assert next(line for line in report.splitlines() if line.startswith("| Task |")) == \
        "| Task | Metric | causal | future | mma |"
    assert "_DemoColor: the runs hold different samples (4, 2, 4); every column is scored on the 2 they share._" \
        in report
    assert "`tiny__future`: model=" in report and "**samples differ** from other runs on DemoColor, DemoCount" in report
    for task in TASKS:  # every column is the mean over the two shared samples, computed here from eval_score.json
        row = next(line for line in report.splitlines() if line.startswith(f"| {task} |"))
        cells = [c.strip().split(" ")[0].strip("*") for c in row.strip("|").split("|")[2:]]
        for cell, run in zip(cells, ["tiny__causal", "tiny__future", "tiny__mma"], strict=True):
            scores = _eval_score(out / run, task)
            assert float(cell) == round(100 * (scores["0"] + scores["1"]) / 2, 2)


def test_overwrite_replaces_the_run_folder(ckpt, tmp_path):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    assert _eval(data, ckpt, out, "--policy", "causal") == 0
    assert _eval(data, ckpt, out, "--policy", "causal", "--tasks", "DemoCount", "--overwrite",
                 "--max-new-tokens", "4") == 0
    run = out / "tiny__causal"
    assert sorted(p.name for p in run.iterdir()) == ["DemoCount", "result.csv", "result.json", "run.json"]
    assert json.loads((run / "run.json").read_text())["tasks"] == ["DemoCount"]
    assert json.loads((run / "run.json").read_text())["max_new_tokens"] == 4
    assert "DemoColor" not in (run / "result.csv").read_text()
    assert json.loads((run / "result.json").read_text())["tiny__causal"]["Other"].keys() == {"DemoCount"}


def test_gold_answer_comes_from_the_data_at_scoring_time(ckpt, tmp_path, capsys):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    assert _eval(data, ckpt, out, "--policy", "causal", "--tasks", "DemoCount", "--no-score") == 0
    run = out / "tiny__causal"
    preds = json.loads((run / "DemoCount" / "pred.json").read_text())
    path = data / "DemoCount" / "DemoCount.json"
    payload = json.loads(path.read_text())
    payload["data"][0]["response"] = preds[0]["pred_response"]  # the gold answer is corrected to the prediction
    payload["data"][1]["response"] = "qqqq"  # shares no word with any prediction: ROUGE-L 0
    path.write_text(json.dumps(payload))
    preds[0]["gt_response"] = "stale"  # what pred.json says is ignored
    (run / "DemoCount" / "pred.json").write_text(json.dumps(preds))
    assert main(["score", "--data-dir", str(data), "--result-dir", str(run)]) == 0
    assert _eval_score(run, "DemoCount") == {"0": 1.0, "1": 0.0}
    # resuming after the gold fix is fine too: the prediction's inputs did not change
    assert _eval(data, ckpt, out, "--policy", "causal", "--tasks", "DemoCount") == 0


def test_changed_question_refuses_resume_and_scoring(ckpt, tmp_path, capsys):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    assert _eval(data, ckpt, out, "--policy", "causal", "--tasks", "DemoCount", "--no-score") == 0
    path = data / "DemoCount" / "DemoCount.json"
    payload = json.loads(path.read_text())
    payload["data"][1]["task_instance"]["context"] += " please"
    path.write_text(json.dumps(payload))
    capsys.readouterr()
    assert _eval(data, ckpt, out, "--policy", "causal", "--tasks", "DemoCount") == 2
    assert "1 prediction(s) of DemoCount (sample_id [1]) were made on other data" in _err(capsys)
    assert main(["score", "--data-dir", str(data), "--result-dir", str(out / "tiny__causal")]) == 2
    assert "DemoCount: 1 prediction(s)" in _err(capsys)
    assert not (out / "tiny__causal" / "DemoCount" / "eval.json").exists()


def test_failed_run_without_predictions_does_not_block(ckpt, tmp_path):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    run = out / "tiny__causal"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model": str(ckpt), "max_new_tokens": 512}))  # a run that failed
    assert _eval(data, ckpt, out, "--policy", "causal", "--tasks", "DemoCount") == 0
    assert json.loads((run / "run.json").read_text())["max_new_tokens"] == 3


def _no_model_load(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli_eval, "load_model", fail)


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["data"][0].update(response=""), "the gold answer 'response' is ''; it must be a non-empty string"),
    (lambda p: p.update(data=[]), "the task has no samples (its 'data' list is empty)"),
])
def test_bad_data_fails_before_the_model_loads(ckpt, tmp_path, capsys, monkeypatch, edit, message):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    path = data / "DemoCount" / "DemoCount.json"
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
    _no_model_load(monkeypatch)
    assert _eval(data, ckpt, out) == 2
    assert message in _err(capsys)
    assert not out.exists()


def test_corrupt_image_fails_before_the_model_loads(ckpt, tmp_path, capsys, monkeypatch):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    (data / "DemoCount" / "images" / "1_1.png").write_bytes(b"not a png at all")
    _no_model_load(monkeypatch)
    assert _eval(data, ckpt, out) == 2
    assert "image '1_1.png' at " in (line := _err(capsys)) and "cannot be decoded (UnidentifiedImageError" in line
    assert not out.exists()
    assert main(["train", "--data-dir", str(data), "--steps", "1", "--output-dir", str(tmp_path / "t")]) == 2
    assert "cannot be decoded" in _err(capsys) and not (tmp_path / "t").exists()


@pytest.mark.parametrize("args,message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--limit", "0"], "--limit must be at least 1, got 0"),
    (["--model", "no/such/model"], "--model no/such/model: no such folder"),
    (["--output-dir", "FILE/out"], "is a file, not a folder; choose another --output-dir"),
    (["--demo"], "--demo runs the built-in demo VLM; drop --model"),
])
def test_bad_arguments_fail_before_anything(ckpt, tmp_path, capsys, monkeypatch, args, message):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a.startswith("FILE") else a for a in args]
    _no_model_load(monkeypatch)
    cmd = ["eval", "--data-dir", str(data), "--model", str(ckpt), "--output-dir", str(out), *args]
    if "--demo" in args:
        cmd.remove("--data-dir"), cmd.remove(str(data))
    assert main(cmd) == 2
    assert message in _err(capsys)
    assert _files(out) == [] and _files(tmp_path / "FILE") == []


def test_device_without_cuda(ckpt, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _no_model_load(monkeypatch)
    assert _eval(_data(tmp_path / "d", 2), ckpt, tmp_path / "out", "--device", "cuda") == 2
    assert "--device cuda: CUDA is not available on this machine" in _err(capsys)


def test_second_eval_into_a_locked_folder(ckpt, tmp_path, capsys, monkeypatch):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"
    _no_model_load(monkeypatch)
    with FolderLock(out / "tiny__causal"):  # another process's eval holds the run folder
        assert _eval(data, ckpt, out, "--policy", "causal") == 2
    assert "another futuremask process is writing this run folder" in _err(capsys)
    assert _files(out) == []  # the holder's lock file is gone with it; nothing else was written


def test_sigint_says_the_run_resumes(ckpt, tmp_path, capsys, monkeypatch):
    data, out = _data(tmp_path / "d", 2), tmp_path / "out"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "generate_batch", interrupt)
    assert _eval(data, ckpt, out, "--policy", "causal") == 130
    assert _err(capsys) == ("futuremask eval: interrupted (exit 130); finished batches are saved: run the same "
                            "command again to resume")
    assert ".tiny__causal.lock" not in _files(out)


def test_report_with_a_malformed_run_json(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "result.json").write_text(json.dumps({"r": {"Other": {"T": {"Accuracy": 0.5}}}}))
    (run / "run.json").write_text("[]")
    assert main(["report", str(tmp_path), "--no-plot"]) == 2
    assert _err(capsys) == (f"futuremask report: error: {run / 'run.json'}: the run settings file (run.json) "
                            "should hold a JSON object, found list; fix or delete the file")
