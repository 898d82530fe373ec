"""MileBench loader: task selection and validation errors that name the file and the sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from futuremask.cli import main
from futuremask.eval.data import DataError, load_task, load_tasks, resolve_tasks
from futuremask.eval.demo import generate_demo_data


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    generate_demo_data(tmp_path / "data", samples_per_task=3, seed=0, tasks=["DemoColor", "DemoChange"])
    return tmp_path / "data"


def _edit(data: Path, task: str, edit) -> Path:
    path = data / task / f"{task}.json"
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
    return path


def test_loads_samples_in_file_order_with_absolute_image_paths(data: Path):
    task = load_task(data, "DemoColor")
    raw = json.loads((data / "DemoColor" / "DemoColor.json").read_text())
    assert task.question_type == "multi-choice" and task.total == 3
    assert [s.sample_id for s in task.samples] == [0, 1, 2]
    first = raw["data"][0]
    assert task.samples[0].context == first["task_instance"]["context"]
    assert task.samples[0].image_paths == [str(data / "DemoColor" / "images" / p)
                                           for p in first["task_instance"]["images_path"]]
    assert task.samples[0].response == first["response"]
    assert task.samples[0].instruction == raw["meta_data"]["task_instruction"][0]
    assert [s.sample_id for s in load_task(data, "DemoColor", limit=2).samples] == [0, 1]


def test_task_names_and_groups(data: Path):
    assert resolve_tasks(data) == ["DemoChange", "DemoColor"]
    assert resolve_tasks(data, ["DemoColor", "all"]) == ["DemoColor", "DemoChange"]
    with pytest.raises(DataError, match="task 'TQA'.*tasks present: DemoChange, DemoColor"):
        resolve_tasks(data, ["TQA"])
    with pytest.raises(DataError, match="no task of group 'temporal'"):
        resolve_tasks(data, ["temporal"])
    (data / "ActionSequence" / "images").mkdir(parents=True)
    (data / "ActionSequence" / "ActionSequence.json").write_text(json.dumps({
        "meta_data": {"task_instruction": ["x"], "question_type": "open-ended"}, "data": []}))
    assert resolve_tasks(data, ["temporal"]) == ["ActionSequence"]


def test_missing_image_names_file_sample_and_image(data: Path):
    path = data / "DemoChange" / "DemoChange.json"
    (data / "DemoChange" / "images" / "1_2.png").unlink()
    with pytest.raises(DataError) as err:
        load_task(data, "DemoChange")
    assert str(path) in str(err.value) and "sample 1 (#1)" in str(err.value)
    assert "image '1_2.png' not found" in str(err.value)


def test_bad_placeholder_index(data: Path):
    def edit(p):
        p["data"][2]["task_instance"]["context"] += " {image#7}"
    path = _edit(data, "DemoChange", edit)
    with pytest.raises(DataError, match=r"sample 2 \(#2\): placeholder \{image#7\} but the sample has 2 image"):
        load_task(data, "DemoChange")
    assert str(path) in _message(lambda: load_task(data, "DemoChange"))


def test_answer_not_among_choices(data: Path):
    def edit(p):
        p["data"][0]["response"] = "magenta"
    _edit(data, "DemoColor", edit)
    with pytest.raises(DataError, match="sample 0 \\(#0\\): answer 'magenta' is not among the choices"):
        load_task(data, "DemoColor")


def test_malformed_json_reports_line_and_column(data: Path):
    path = data / "DemoColor" / "DemoColor.json"
    path.write_text('{"meta_data": {},\n "data": [1, ]}')  # column 14 is the "]" after "1, "
    with pytest.raises(DataError, match=r"DemoColor.json: malformed JSON at line 2, column 14: Expecting value"):
        load_task(data, "DemoColor")


def test_duplicate_and_non_integer_sample_ids(data: Path):
    def dup(p):
        p["data"][1]["sample_id"] = 0
    _edit(data, "DemoColor", dup)
    with pytest.raises(DataError, match="sample 0 \\(#1\\): duplicate sample_id"):
        load_task(data, "DemoColor")

    def text_id(p):
        p["data"][1]["sample_id"] = "abc"
    _edit(data, "DemoColor", text_id)
    with pytest.raises(DataError, match="sample 'abc' \\(#1\\): sample_id must be an integer"):
        load_task(data, "DemoColor")


def test_limit_skips_validation_of_unselected_samples(data: Path):
    (data / "DemoChange" / "images" / "2_1.png").unlink()
    assert len(load_task(data, "DemoChange", limit=2).samples) == 2
    with pytest.raises(DataError, match="sample 2"):
        load_tasks(data, ["DemoChange"])


def test_cli_bad_data_fails_before_writing_anything(data: Path, tmp_path: Path, capsys):
    (data / "DemoColor" / "images" / "0_1.png").unlink()
    out = tmp_path / "outputs"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")  # never loaded: the data fails first
    code = main(["eval", "--data-dir", str(data), "--model", str(tmp_path / "ckpt"),
                 "--output-dir", str(out), "--no-progress"])
    assert code == 2
    assert "image '0_1.png' not found" in capsys.readouterr().err
    assert not out.exists()


def _message(fn) -> str:
    try:
        fn()
    except DataError as err:
        return str(err)
    raise AssertionError("no DataError raised")
