"""score_run / `futuremask score` on a hand-made run folder, against hand-worked official outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from futuremask.cli import score as cli_score
from futuremask.eval.scoring import expand_tasks, score_run, score_task
from futuremask.eval.summary import CATEGORIES

# ROUGE-L F of "the cat sat on the mat" vs "the cat is on the mat": P = R = 4/5 (see test_scoring_rules).
F_CAT = 2.0 * (0.8 * 0.8 / (0.8 + 0.8 + 1e-8))


def _sample(sid: int, gold: str, n_images: int, choices: list[str] | None = None) -> dict:
    instance = {"context": "{image#1} question", "images_path": [f"{sid}_{k}.jpg" for k in range(n_images)]}
    if choices is not None:
        instance["choice_list"] = choices
    return {
        "sample_id": sid,
        "task_instruction_id": 0,
        "image_quantity_level": "Few",  # deliberately stale: the scorer recomputes it from images_path
        "response": gold,
        "task_instance": instance,
    }


def _pred(sid: int, gold: str, pred: str) -> dict:
    return {
        "sample_id": sid,
        "image": [],
        "question": "q",
        "gt_response": gold,
        "gen_model_id": "tiny",
        "pred_response": pred,
        "gen_kwargs": {},
    }


COLORS = ["red", "green", "blue"]
# task -> (question_type, data samples, predictions in pred.json order)
TASKS = {
    "ColorPick": (
        "multi-choice",
        [
            _sample(0, "green", 2, COLORS),
            _sample(1, "blue", 6, COLORS),
            _sample(2, "red", 32, COLORS),
            _sample(3, "red", 5, COLORS),
        ],
        [
            _pred(3, "red", "I think it's red."),  # text "red" found in the space-free prediction -> A, right
            _pred(0, "green", "B"),  # key -> B, right
            _pred(1, "blue", "the answer is c"),  # fallback -> "AC", wrong
            _pred(2, "red", ""),  # empty -> "C", wrong
        ],
    ),
    "Caption": (
        "open-ended",
        [_sample(0, "the cat is on the mat", 2), _sample(1, "red", 2)],
        [
            _pred(0, "the cat is on the mat", "The cat sat on the mat."),  # F_CAT
            _pred(1, "red", ""),  # empty -> 0
        ],
    ),
    "TextNeedleInAHaystack": (
        "open-ended",
        [_sample(0, "apple", 40), _sample(1, "apple", 3)],
        [
            _pred(0, "apple", "The needle is apple."),  # whole word -> 1
            _pred(1, "apple", "pineapple"),  # not a whole word -> 0
        ],
    ),
    "MMCoQA": (
        "multi-choice",
        [_sample(0, "Paris", 1, ["Paris", "Rome"])],
        [
            _pred(0, "Paris", "It is in paris, France"),  # substring rule wins over multi-choice -> 1
        ],
    ),
}


def _write(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")


@pytest.fixture()
def run_dirs(tmp_path: Path) -> tuple[Path, Path]:
    data_dir, result_dir = tmp_path / "data", tmp_path / "outputs" / "tiny-causal"
    for task, (qtype, data, preds) in TASKS.items():
        meta = {"task_instruction": ["look"], "question_type": qtype}
        _write(data_dir / task / f"{task}.json", {"meta_data": meta, "data": data})
        _write(result_dir / task / "pred.json", preds)
    return data_dir, result_dir


def test_score_run_writes_official_files(run_dirs: tuple[Path, Path]) -> None:
    data_dir, result_dir = run_dirs
    summary = score_run(data_dir, result_dir)

    def read(task: str, name: str) -> str:
        return (result_dir / task / name).read_text(encoding="utf-8")

    # multi-choice: 2 right of 4; Few = samples 0 (2 images) and 3 (5), Medium = 1 (6), Many = 2 (32).
    assert read("ColorPick", "eval.json") == (
        '{"Accuracy": 0.5, "image_quantity_level-Accuracy": {"Few": 1.0, "Medium": 0.0, "Many": 0.0}, '
        '"image_quantity_level-Result": {"Few": [2, 2], "Medium": [0, 1], "Many": [0, 1]}}'
    )
    assert json.loads(read("ColorPick", "eval_score.json")) == [
        {"id": "3", "score": "1"},
        {"id": "0", "score": "1"},
        {"id": "1", "score": "0"},
        {"id": "2", "score": "0"},
    ]
    extracted = json.loads(read("ColorPick", "pred_with_extracted.json"))
    assert [r["extracted"] for r in extracted] == ["A", "B", "AC", "C"]
    assert [r["result"] for r in extracted] == [1, 1, 0, 0]
    first = extracted[0]
    assert first["pred_response"] == "i think it's red" and first["gt_response"] == "red"
    assert first["choice_list"] == COLORS and first["image"] == [f"3_{k}.jpg" for k in range(5)]
    assert list(first) == [
        "sample_id",
        "image",
        "question",
        "gt_response",
        "gen_model_id",
        "pred_response",
        "gen_kwargs",
        "choice_list",
        "image_quantity_level",
        "extracted",
        "result",
    ]

    # open-ended: mean of F_CAT and 0, both in Few; empty levels are an int 0 and [0, 0].
    caption = json.loads(read("Caption", "eval.json"))
    assert caption == {
        "Rouge-L f": pytest.approx(F_CAT / 2, abs=1e-15),
        "image_quantity_level-Accuracy": {"Few": pytest.approx(F_CAT / 2, abs=1e-15), "Medium": 0, "Many": 0},
        "image_quantity_level-Result": {
            "Few": [pytest.approx(F_CAT, abs=1e-15), 2],
            "Medium": [0, 0],
            "Many": [0, 0],
        },
    }
    assert '"Medium": 0,' in read("Caption", "eval.json")  # int, not 0.0
    assert json.loads(read("Caption", "eval_score.json")) == [
        {"id": "0", "score": "0.8"},
        {"id": "1", "score": "0"},
    ]
    assert not (result_dir / "Caption" / "pred_with_extracted.json").exists()

    assert json.loads(read("TextNeedleInAHaystack", "eval.json")) == {
        "Accuracy": 0.5,
        "image_quantity_level-Accuracy": {"Few": 0.0, "Medium": 0, "Many": 1.0},
        "image_quantity_level-Result": {"Few": [0, 1], "Medium": [0, 0], "Many": [1, 1]},
    }
    assert json.loads(read("MMCoQA", "eval.json"))["Accuracy"] == 1.0
    assert not (result_dir / "MMCoQA" / "pred_with_extracted.json").exists()

    # summary: official categories with {} for absent tasks, extra tasks under "Other".
    run = summary["tiny-causal"]
    assert list(run) == [*CATEGORIES, "Other"]
    assert run["Realistic Temporal"]["ActionLocalization"] == {}
    assert run["Realistic Semantic"]["MMCoQA"]["Accuracy"] == 1.0
    assert list(run["Other"]) == ["Caption", "ColorPick"]
    assert json.loads((result_dir / "result.json").read_text(encoding="utf-8")) == summary
    assert (result_dir / "result.csv").read_text(encoding="utf-8") == (
        "Model,MMCoQA (Accuracy),TextNeedleInAHaystack (Accuracy),Caption (Rouge-L f),ColorPick (Accuracy)\n"
        "tiny-causal,100.0,50.0,40.0,50.0\n"
    )


def test_score_task_does_not_modify_its_inputs() -> None:
    qtype, data, preds = TASKS["ColorPick"]
    before = json.dumps(preds)
    score_task("ColorPick", {"meta_data": {"question_type": qtype}, "data": data}, preds)
    assert json.dumps(preds) == before


def test_count_mismatch_is_an_error_and_writes_nothing(run_dirs: tuple[Path, Path]) -> None:
    data_dir, result_dir = run_dirs
    _write(result_dir / "Caption" / "pred.json", TASKS["Caption"][2][:1])
    with pytest.raises(ValueError, match="1 predictions but the data has 2 samples"):
        score_run(data_dir, result_dir)
    assert not list(result_dir.glob("*/eval.json")) and not (result_dir / "result.json").exists()


def test_missing_and_duplicate_ids_are_named(run_dirs: tuple[Path, Path]) -> None:
    data_dir, result_dir = run_dirs
    preds = TASKS["Caption"][2]
    _write(result_dir / "Caption" / "pred.json", [preds[0], dict(preds[1], sample_id=7)])
    with pytest.raises(ValueError, match=r"Caption sample 1: no prediction"):
        score_run(data_dir, result_dir, ["Caption"])
    _write(result_dir / "Caption" / "pred.json", [preds[0], preds[0]])
    with pytest.raises(ValueError, match="appears twice"):
        score_run(data_dir, result_dir, ["Caption"])


def test_unknown_task_and_missing_predictions(run_dirs: tuple[Path, Path]) -> None:
    data_dir, result_dir = run_dirs
    with pytest.raises(FileNotFoundError, match="unknown task 'Nope'"):
        score_run(data_dir, result_dir, ["Nope"])
    (result_dir / "Caption" / "pred.json").unlink()
    with pytest.raises(FileNotFoundError, match="Caption: no prediction file"):
        score_run(data_dir, result_dir, ["Caption"])


def test_score_command(run_dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, result_dir = run_dirs
    parser = argparse.ArgumentParser()
    cli_score.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "score",
            "--data-dir",
            str(data_dir),
            "--result-dir",
            str(result_dir),
            "--tasks",
            "ColorPick",
            "MMCoQA",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "ColorPick" in out and " 50.00" in out and "100.00" in out
    assert (result_dir / "ColorPick" / "eval.json").exists() and not (
        result_dir / "Caption" / "eval.json"
    ).exists()


def test_task_groups_expand_to_present_tasks(run_dirs: tuple[Path, Path]) -> None:
    data_dir, result_dir = run_dirs
    assert expand_tasks(["diagnostic"], result_dir) == ["TextNeedleInAHaystack"]
    assert expand_tasks(["semantic", "Caption", "MMCoQA"], result_dir) == ["MMCoQA", "Caption"]
    assert expand_tasks(["all"], result_dir) == ["Caption", "ColorPick", "MMCoQA", "TextNeedleInAHaystack"]
    with pytest.raises(FileNotFoundError, match="no task of group 'temporal'"):
        expand_tasks(["temporal"], result_dir)
    summary = score_run(data_dir, result_dir, ["diagnostic"])
    assert summary["tiny-causal"]["Diagnostic"]["TextNeedleInAHaystack"]["Accuracy"] == 0.5
    assert not (result_dir / "Caption" / "eval.json").exists()
