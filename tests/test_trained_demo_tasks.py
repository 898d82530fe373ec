"""The trained-mask demo tasks (DemoWhich, DemoPick): answers checked against their own pixels, evaluation
samples never seen in training, and `futuremask train --demo --tasks/--patch-size` refusing bad input."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from demo_pixels import nearest_color, pixels, read_task

from futuremask.cli import main
from futuremask.eval.data import load_tasks
from futuremask.eval.demo import DEMO_TASKS, DEMO_WORDS, TRAINED_DEMO_TASKS, generate_demo_data


def _shape_at(image: np.ndarray, x: int) -> str:
    """The shape drawn in the box of half-width 6 around (x, 16): read from its top and bottom corners."""
    top, bottom = (image[11, x - 5] != 255).any(), (image[21, x - 5] != 255).any()
    return "square" if top else ("triangle" if bottom else "circle")


def _identity(root: Path, task: str, sample: dict) -> str:
    """What the model sees of a sample: its text and the bytes of its images (not the file names)."""
    digest = hashlib.sha256(json.dumps([sample["task_instance"]["context"],
                                        sample["task_instance"].get("choice_list")]).encode())
    for name in sample["task_instance"]["images_path"]:
        digest.update((root / task / "images" / name).read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained-demo")
    assert generate_demo_data(root, samples_per_task=40, seed=0, tasks=list(TRAINED_DEMO_TASKS)) == list(
        TRAINED_DEMO_TASKS)
    return root


def test_default_demo_tasks_are_unchanged(tmp_path: Path):
    assert generate_demo_data(tmp_path, samples_per_task=1) == list(DEMO_TASKS)
    assert not set(TRAINED_DEMO_TASKS) & {p.name for p in tmp_path.iterdir()}


def test_tasks_are_valid_milebench_with_demo_words(data: Path):
    tasks = load_tasks(data)
    assert {t.name: t.question_type for t in tasks} == dict.fromkeys(TRAINED_DEMO_TASKS, "multi-choice")
    for task in tasks:
        for s in task.samples:
            assert len(s.image_paths) == 4 and len(s.choice_list) == 4 and s.response in s.choice_list
            words = s.context.split() + s.response.split() + [w for c in s.choice_list for w in c.split()]
            assert all(w in DEMO_WORDS or w.startswith("{") for w in words)


def test_which_answer_is_the_named_image_and_the_choices_are_the_four_images(data: Path):
    for sample in read_task(data, "DemoWhich")["data"]:
        instance = sample["task_instance"]
        k = int(re.search(r"in image (\d+) \?", instance["context"]).group(1))
        colors = [nearest_color(pixels(data, "DemoWhich", n)[16, 16]) for n in instance["images_path"]]
        assert colors[k - 1] == sample["response"]
        assert sorted(instance["choice_list"]) == sorted(colors) and len(set(colors)) == 4


def test_pick_answer_is_the_named_shape_of_the_named_image(data: Path):
    for sample in read_task(data, "DemoPick")["data"]:
        instance = sample["task_instance"]
        shape, k = re.search(r"is the (\w+) in image (\d+) \?", instance["context"]).groups()
        image = pixels(data, "DemoPick", instance["images_path"][int(k) - 1])
        halves = [nearest_color(image[16, 8]), nearest_color(image[16, 24])]
        assert sample["response"] in halves and halves[0] != halves[1]
        other = halves[1 - halves.index(sample["response"])]
        assert other in instance["choice_list"]  # reading the wrong half of the right image is a listed mistake
        assert _shape_at(image, 8 if halves.index(sample["response"]) == 0 else 24) == shape


def test_evaluation_samples_never_occur_in_the_training_data(tmp_path: Path):
    # `futuremask train --demo` draws seed 1, the evaluation seed 0: no evaluation prompt (text + pixels)
    # may be a training prompt, else the held-out scores would measure memorisation.
    generate_demo_data(tmp_path / "train", samples_per_task=600, seed=1, tasks=list(TRAINED_DEMO_TASKS))
    generate_demo_data(tmp_path / "eval", samples_per_task=200, seed=0, tasks=list(TRAINED_DEMO_TASKS))
    for task in TRAINED_DEMO_TASKS:
        train = {_identity(tmp_path / "train", task, s) for s in read_task(tmp_path / "train", task)["data"]}
        held_out = [_identity(tmp_path / "eval", task, s) for s in read_task(tmp_path / "eval", task)["data"]]
        assert len(train) == 600 and len(set(held_out)) == 200
        assert not train & set(held_out), task


@pytest.mark.parametrize(("extra", "message"), [
    (["--tasks", "DemoBogus"], "unknown demo task"),
    (["--patch-size", "5"], "--patch-size must divide"),
    (["--patch-size", "0"], "--patch-size must divide"),
])
def test_train_refuses_bad_demo_options_before_work(tmp_path: Path, capsys, extra, message):
    code = main(["train", "--demo", "--steps", "1", "--output-dir", str(tmp_path / "out"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_on_a_trained_demo_task_with_a_patch_size(tmp_path: Path):
    out = tmp_path / "ckpt"
    code = main(["train", "--demo", "--tasks", "DemoWhich", "--demo-samples", "4", "--steps", "2", "--batch-size", "2",
                 "--hidden-size", "32", "--layers", "1", "--vision-hidden-size", "16", "--patch-size", "16",
                 "--output-dir", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["patch_size"] == 16
    record = json.loads((out / "futuremask_training.json").read_text())
    assert record["examples"] == 4  # only the named task was generated and trained on
