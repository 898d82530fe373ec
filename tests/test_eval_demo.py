"""The procedural demo benchmark (checked against its own pixels) and `futuremask eval --demo` end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from demo_pixels import nearest_color, pixels, read_task

from futuremask.cli import main
from futuremask.eval.data import load_tasks
from futuremask.eval.demo import DEMO_TASKS, DEMO_WORDS, generate_demo_data, load_demo_model


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert generate_demo_data(root, samples_per_task=12, seed=0) == list(DEMO_TASKS)
    return root


def test_same_seed_same_files(demo: Path, tmp_path: Path):
    generate_demo_data(tmp_path, samples_per_task=12, seed=0)
    for task in DEMO_TASKS:
        assert (tmp_path / task / f"{task}.json").read_bytes() == (demo / task / f"{task}.json").read_bytes()
        for png in (demo / task / "images").iterdir():
            assert (tmp_path / task / "images" / png.name).read_bytes() == png.read_bytes()
    generate_demo_data(tmp_path / "other", samples_per_task=12, seed=1, tasks=["DemoColor"])
    assert read_task(tmp_path / "other", "DemoColor") != read_task(demo, "DemoColor")


def test_valid_milebench_data_with_questions_after_the_images(demo: Path):
    tasks = load_tasks(demo)  # the loader's validation passes
    assert {t.name: t.question_type for t in tasks} == {
        "DemoChange": "open-ended", "DemoColor": "multi-choice", "DemoCount": "open-ended",
        "DemoDirection": "multi-choice", "DemoFind": "multi-choice"}
    vocab = set(DEMO_WORDS)
    for task in tasks:
        assert len(task.samples) == 12
        for s in task.samples:
            n = len(s.image_paths)
            assert 2 <= n <= 4
            slots = " ".join(f"image {k} : {{image#{k}}}" for k in range(1, n + 1))
            assert s.context.startswith(slots + " ") and "{" not in s.context[len(slots):]
            words = s.context[len(slots):].split() + s.response.split() + s.instruction.split()
            words += [w for c in s.choice_list or [] for w in c.split()]
            assert set(words) <= vocab


def test_color_answers_match_the_drawn_pixels(demo: Path):
    for sample in read_task(demo, "DemoColor")["data"]:
        k = int(re.search(r"in image (\d+) \?", sample["task_instance"]["context"]).group(1))
        center = pixels(demo, "DemoColor", sample["task_instance"]["images_path"][k - 1])[16, 16]
        assert nearest_color(center) == sample["response"]
        assert sample["response"] in sample["task_instance"]["choice_list"]


def test_direction_answers_match_the_moving_shape(demo: Path):
    for sample in read_task(demo, "DemoDirection")["data"]:
        centers = []
        for name in sample["task_instance"]["images_path"]:
            ys, xs = np.nonzero((pixels(demo, "DemoDirection", name) != 255).any(axis=2))
            centers.append((xs.mean(), ys.mean()))
        dx, dy = centers[-1][0] - centers[0][0], centers[-1][1] - centers[0][1]
        moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert moved == sample["response"]


def test_change_answers_name_the_changed_side(demo: Path):
    for sample in read_task(demo, "DemoChange")["data"]:
        before, after = (pixels(demo, "DemoChange", n) for n in sample["task_instance"]["images_path"])
        side = "left" if (before[:, :16] != after[:, :16]).any() else "right"
        x = 9 if side == "left" else 23
        assert sample["response"] == f"{side} {nearest_color(after[16, x])}"


def test_find_answers_are_balanced_and_match_the_pixels(tmp_path: Path):
    generate_demo_data(tmp_path, samples_per_task=200, seed=0, tasks=["DemoFind"])
    counts = dict.fromkeys(range(1, 5), 0)
    for sample in read_task(tmp_path, "DemoFind")["data"]:
        instance = sample["task_instance"]
        assert instance["choice_list"] == ["image 1", "image 2", "image 3", "image 4"]
        k = int(sample["response"].split()[1])
        counts[k] += 1
        color = re.search(r"has the (\w+) \w+ \?", instance["context"]).group(1)
        center = pixels(tmp_path, "DemoFind", instance["images_path"][k - 1])[16, 16]
        assert nearest_color(center) == color
    # uniform over 4 positions: 50 expected each, a constant answer scores about 25 %
    assert all(30 <= c <= 70 for c in counts.values()), counts


def test_change_constant_answer_scores_low(tmp_path: Path):
    # No template words: every word of a constant answer is wrong in about half the samples or more.
    generate_demo_data(tmp_path, samples_per_task=200, seed=0, tasks=["DemoChange"])
    answers = [s["response"].split() for s in read_task(tmp_path, "DemoChange")["data"]]
    assert all(len(a) == 2 and a[0] in ("left", "right") for a in answers)
    best = max(sum(w in a for a in answers) for w in {w for a in answers for w in a})
    assert best / len(answers) < 0.6  # a constant's ROUGE-L F is the mean of its two words' shares


def test_demo_model_covers_every_demo_word():
    model, processor = load_demo_model()
    tok = processor.tokenizer
    ids = tok(" ".join(DEMO_WORDS), add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and len(ids) == len(DEMO_WORDS)
    assert type(model).__name__ == "LlavaForConditionalGeneration"


def test_eval_demo_end_to_end(tmp_path: Path, capsys):
    assert main(["eval", "--demo", "--limit", "2", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    table = capsys.readouterr().out
    runs = sorted(p.name for p in (tmp_path / "demo").iterdir() if p.is_dir())
    policies = ["causal", "future", "future_v2t", "future_v2v", "mma"]
    assert [r.split("__")[1] for r in runs] == policies
    for run in runs:
        assert json.loads((tmp_path / "demo" / run / "run.json").read_text())["policy"] == run.split("__")[1]
        assert (tmp_path / "demo" / run / "result.json").is_file()
        for task in DEMO_TASKS:
            assert len(json.loads((tmp_path / "demo" / run / task / "pred.json").read_text())) == 2
            assert (tmp_path / "demo" / run / task / "eval.json").is_file()
    header = next(line for line in table.splitlines() if line.startswith("| Task"))
    assert all(p in header for p in policies)
    assert all(f"| {task} |" in table for task in DEMO_TASKS)
