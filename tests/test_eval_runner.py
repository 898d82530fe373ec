"""The generation runner: batching, resume, overwrite, sharding, settings guard."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

import futuremask as fm
from futuremask.eval import prompt_styles, runner
from futuremask.eval.data import load_tasks
from futuremask.eval.demo import DEMO_WORDS, generate_demo_data
from futuremask.eval.report import build_report
from futuremask.eval.runner import RunConfig, evaluate, run_name
from futuremask.eval.scoring import score_run
from futuremask.tiny import tiny_llava

TASKS = ["DemoColor", "DemoChange", "DemoCount"]  # 2-4 images per sample: several image-count groups


@pytest.fixture(scope="module")
def model_and_processor():
    return tiny_llava(words=list(DEMO_WORDS), seed=0)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_demo_data(root, samples_per_task=6, seed=1, tasks=TASKS)
    for task in TASKS:  # vary the prompt lengths among samples with the same image count: batches need padding
        path = root / task / f"{task}.json"
        payload = json.loads(path.read_text())
        for i, sample in enumerate(payload["data"]):
            sample["task_instance"]["context"] = sample["task_instance"]["context"].replace(
                "} what", "} " + "look " * (i % 3) + "what").replace("} how", "} " + "look " * (i % 3) + "how")
        path.write_text(json.dumps(payload))
    return load_tasks(root)


def _config(**kw) -> RunConfig:
    return RunConfig(**{"model": "tiny", "policy": "causal", "max_new_tokens": 5, "progress": False, **kw})


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(model_and_processor, tasks, tmp_path_factory) -> Path:
    """An uninterrupted batch-size-1 run of two policies."""
    out = tmp_path_factory.mktemp("ref")
    model, processor = model_and_processor
    evaluate(model, processor, tasks, ["causal", "future"], out, _config())
    return out


def test_records_match_a_direct_generate_call(reference, model_and_processor, tasks):
    model, processor = model_and_processor
    sample = tasks[0].samples[2]
    record = json.loads((reference / "tiny__future" / tasks[0].name / "pred.json").read_text())[2]
    assert record["sample_id"] == sample.sample_id and record["gt_response"] == sample.response
    assert record["image"] == sample.image_paths and record["gen_model_id"] == "tiny"
    # An independent generation: the tiny template's chat text written by hand (its word-level tokenizer
    # splits on any whitespace, so spacing does not matter), greedy decoding.
    text = "USER: " + record["question"].replace("<ImageHere>", " <image> ") + " ASSISTANT:"
    images = [Image.open(p).convert("RGB") for p in sample.image_paths]
    inputs = processor(text=[text], images=images, return_tensors="pt")
    with fm.apply(model, "future"), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=1, do_sample=False)
    expected = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    assert record["pred_response"] == expected
    assert getattr(model, "_futuremask", None) is None  # every policy handle was removed


def test_run_layout_and_run_json(reference, tasks):
    assert sorted(p.name for p in reference.iterdir()) == ["tiny__causal", "tiny__future"]
    meta = json.loads((reference / "tiny__future" / "run.json").read_text())
    assert meta["model"] == "tiny" and meta["policy"] == "future" and meta["merge"] is None
    assert meta["backend"] == "auto" and meta["max_context_len"] == 4096 and meta["tasks"] == sorted(TASKS)
    for task in tasks:
        records = json.loads((reference / "tiny__causal" / task.name / "pred.json").read_text())
        assert [r["sample_id"] for r in records] == [s.sample_id for s in task.samples]
        assert set(records[0]) >= {"sample_id", "image", "question", "gt_response", "gen_model_id",
                                   "pred_response", "gen_kwargs"}
    assert run_name("org/My Model", "future_v2v", "lse") == "My-Model__future_v2v__merge-lse"


def test_policies_change_predictions(reference, tasks):
    def preds(run):
        return [r["pred_response"] for t in tasks
                for r in json.loads((reference / run / t.name / "pred.json").read_text())]
    assert preds("tiny__causal") != preds("tiny__future")


def test_batching_equals_batch_size_one(reference, model_and_processor, tasks, tmp_path, monkeypatch):
    model, processor = model_and_processor
    real = prompt_styles.chat_inputs
    padded: list[int] = []

    def spy(processor, prompts):
        inputs = real(processor, prompts)
        padded.append(int((inputs["attention_mask"] == 0).sum()))
        assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding
        return inputs

    monkeypatch.setattr(prompt_styles, "chat_inputs", spy)
    evaluate(model, processor, tasks, ["causal", "future"], tmp_path, _config(batch_size=4))
    assert sum(p > 0 for p in padded) >= 4  # several batches really mixed prompt lengths
    assert _tree(tmp_path) == _tree(reference)


def test_only_a_tasks_last_batch_is_short(reference, model_and_processor, tasks, tmp_path, monkeypatch):
    """Batches are cut across image counts (ordered by count): ceil(n / batch size) generate calls a task, where
    cutting each count apart leaves a short batch per count; the records are those of batch size 1."""
    model, processor = model_and_processor
    real = prompt_styles.chat_inputs
    counts: list[list[int]] = []

    def spy(processor, prompts):
        counts.append([len(p.image_paths) for p in prompts])
        return real(processor, prompts)

    monkeypatch.setattr(prompt_styles, "chat_inputs", spy)
    evaluate(model, processor, tasks, ["future"], tmp_path, _config(batch_size=4))
    sizes = [len(t.samples) for t in tasks]
    assert len(counts) == sum(-(-n // 4) for n in sizes)
    assert any(len(set(c)) > 1 for c in counts)  # some batch holds two image counts
    assert all(c == sorted(c) for c in counts)
    assert _tree(tmp_path / "tiny__future") == _tree(reference / "tiny__future")


def test_a_run_gives_the_processor_back_with_its_own_padding_side(reference, model_and_processor, tasks, tmp_path):
    """The runner pads its batches on the left, then restores the tokenizer's padding_side: a caller that pads on
    the right (training, scoring) must not find its processor switched to left padding by an evaluation."""
    model, processor = model_and_processor
    tokenizer = processor.tokenizer
    before = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        evaluate(model, processor, tasks, ["causal", "future"], tmp_path, _config(batch_size=4))
        assert tokenizer.padding_side == "right"
    finally:
        tokenizer.padding_side = before
    assert _tree(tmp_path) == _tree(reference)  # the batches were still left-padded: the same records


def test_interrupted_run_resumes_to_the_same_files(reference, model_and_processor, tasks, tmp_path, monkeypatch):
    model, processor = model_and_processor
    real = runner.generate_batch
    calls: list[int] = []

    def crash_after_four(model, processor, prompts, gen_kwargs, **style):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(len(prompts))
        return real(model, processor, prompts, gen_kwargs, **style)

    monkeypatch.setattr(runner, "generate_batch", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, processor, tasks, ["causal", "future"], tmp_path, _config(batch_size=2))
    # DemoChange (3 batches of 2) finished; DemoColor stopped after its first batch.
    assert (tmp_path / "tiny__causal" / "DemoChange" / "pred.json").exists()
    task_dir = tmp_path / "tiny__causal" / "DemoColor"
    assert not (task_dir / "pred.json").exists()
    assert len(list((task_dir / "pred.partial").glob("part-*.json"))) == 1
    (task_dir / "pred.partial" / ".part-00001.json.99.tmp").write_text("[{")  # a write cut short

    counted: list[int] = []

    def count(model, processor, prompts, gen_kwargs, **style):
        counted.append(len(prompts))
        return real(model, processor, prompts, gen_kwargs, **style)

    monkeypatch.setattr(runner, "generate_batch", count)
    evaluate(model, processor, tasks, ["causal", "future"], tmp_path, _config(batch_size=2))
    total = 2 * sum(len(t.samples) for t in tasks)
    assert sum(counted) == total - sum(calls)  # nothing finished was generated again
    assert _tree(tmp_path) == _tree(reference)

    counted.clear()  # a third run finds everything done
    evaluate(model, processor, tasks, ["causal", "future"], tmp_path, _config(batch_size=2))
    assert counted == []


def test_overwrite_regenerates(reference, model_and_processor, tasks, tmp_path):
    model, processor = model_and_processor
    evaluate(model, processor, tasks, ["causal"], tmp_path, _config())
    pred = tmp_path / "tiny__causal" / "DemoCount" / "pred.json"
    records = json.loads(pred.read_text())
    records[0]["pred_response"] = "edited"
    pred.write_text(json.dumps(records))
    evaluate(model, processor, tasks, ["causal"], tmp_path, _config())
    assert json.loads(pred.read_text())[0]["pred_response"] == "edited"  # resumed: kept
    evaluate(model, processor, tasks, ["causal"], tmp_path, _config(overwrite=True))
    assert pred.read_bytes() == (reference / "tiny__causal" / "DemoCount" / "pred.json").read_bytes()


def test_two_ranks_and_merge_equal_one_run(reference, model_and_processor, tasks, tmp_path):
    model, processor = model_and_processor
    base = _config(world_size=2)
    evaluate(model, processor, tasks, ["causal", "future"], tmp_path, replace(base, rank=1))
    shard = json.loads((tmp_path / "tiny__causal" / "DemoColor" / "pred.rank1.json").read_text())
    assert [r["sample_id"] for r in shard] == [1, 3, 5]  # rank 1 of 2 takes samples #1, #3, #5
    assert not (tmp_path / "tiny__causal" / "run.json").exists()  # only rank 0 writes run.json
    evaluate(model, processor, tasks, ["causal", "future"], tmp_path, replace(base, rank=0, merge_timeout_s=5))
    assert _tree(tmp_path) == _tree(reference)


def test_rank0_reports_a_missing_shard(model_and_processor, tasks, tmp_path):
    model, processor = model_and_processor
    with pytest.raises(RuntimeError, match=r"pred.rank1.json.*did a rank fail"):
        evaluate(model, processor, tasks[:1], ["causal"], tmp_path, _config(world_size=2, merge_timeout_s=0))


def test_changed_settings_need_overwrite(reference, model_and_processor, tasks, tmp_path):
    model, processor = model_and_processor
    evaluate(model, processor, tasks[:1], ["causal"], tmp_path, _config())
    with pytest.raises(ValueError, match="max_new_tokens=5.*--overwrite"):
        evaluate(model, processor, tasks[:1], ["causal"], tmp_path, _config(max_new_tokens=7))


def test_shard_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runner.shard_from_env() == (3, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4"):
        runner.shard_from_env()


def test_qwen2_vl_processor_batches_equal_batch_one(tasks, tmp_path, monkeypatch):
    """An M-RoPE model whose processor wraps each image (vision start/end): padded batches == batch 1."""
    from families import QWEN_SPECIAL, qwen2_vl
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from futuremask.eval.prompts import count_image_tokens

    vlm = qwen2_vl()
    vlm.tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", *QWEN_SPECIAL]})
    template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    # the processor insists on a video processor, which needs torchvision; images are all we use
    monkeypatch.setattr(Qwen2VLProcessor, "check_argument_for_proper_class", lambda self, name, arg: None)
    images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                      temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=images, tokenizer=vlm.tokenizer, chat_template=template)
    with Image.open(tasks[0].samples[0].image_paths[0]) as im:
        assert count_image_tokens(processor, im.convert("RGB")) == 1 + 4 + 1  # start, 2x2 merged patches, end
    subset = tasks[:2]
    for batch_size in (1, 3):
        evaluate(vlm.model, processor, subset, ["causal", "future"], tmp_path / str(batch_size),
                 _config(model="qwen", batch_size=batch_size, max_new_tokens=4))
    assert _tree(tmp_path / "1") == _tree(tmp_path / "3")
    preds = json.loads((tmp_path / "1" / "qwen__causal" / subset[0].name / "pred.json").read_text())
    assert [r["sample_id"] for r in preds] == [s.sample_id for s in subset[0].samples]
    assert all(r["pred_response"] for r in preds)


def test_cli_with_a_saved_checkpoint_matches_the_in_memory_model(model_and_processor, tasks, tmp_path):
    """`futuremask eval --model DIR` loads through AutoModelForImageTextToText/AutoProcessor: same answers."""
    from futuremask.cli import main

    model, processor = model_and_processor
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    data_dir = Path(tasks[0].path).parent.parent
    assert main(["eval", "--data-dir", str(data_dir), "--model", str(tmp_path / "ckpt"), "--policy", "future",
                 "--tasks", "DemoCount", "--max-new-tokens", "5", "--batch-size", "2", "--output-dir",
                 str(tmp_path / "cli"), "--no-progress", "--no-score"]) == 0
    evaluate(model, processor, [t for t in tasks if t.name == "DemoCount"], ["future"], tmp_path / "api", _config())
    cli = json.loads((tmp_path / "cli" / "ckpt__future" / "DemoCount" / "pred.json").read_text())
    api = json.loads((tmp_path / "api" / "tiny__future" / "DemoCount" / "pred.json").read_text())
    assert [r["gen_model_id"] for r in cli] == [str(tmp_path / "ckpt")] * len(api)
    assert [(r["question"], r["pred_response"]) for r in cli] == [(r["question"], r["pred_response"]) for r in api]


def test_layer_schedule_reaches_the_handle_and_names_the_run(model_and_processor, tasks, tmp_path, monkeypatch):
    model, processor = model_and_processor
    seen = []

    def generate(model, processor, prompts, gen_kwargs, **style_kwargs):
        seen.append((model._futuremask.policy.name, model._futuremask.layers))
        return ["red"] * len(prompts)

    monkeypatch.setattr(runner, "generate_batch", generate)
    one = [replace(tasks[0], samples=tasks[0].samples[:2])]
    runs = evaluate(model, processor, one, ["causal", "future"], tmp_path, _config(layers="1"))
    assert [r.name for r in runs] == ["tiny__causal", "tiny__future__layers-1"]  # causal has no schedule
    assert json.loads((runs[1] / "run.json").read_text())["layers"] == "1"
    assert set(seen) == {("causal", None), ("future", frozenset({1}))}
    seen.clear()
    every = evaluate(model, processor, one, ["future"], tmp_path / "all", _config(layers="1,0"))
    assert every[0].name == "tiny__future__layers-0-1" and set(seen) == {("future", None)}  # the plain policy
    with pytest.raises(ValueError, match="do not exist"):
        evaluate(model, processor, one, ["causal"], tmp_path / "bad", _config(layers="0-5"))
    assert not (tmp_path / "bad").exists()  # refused before any run folder is written


WINDOW = fm.Merge("kernel", kernel=1)


def _preds(run_dir: Path, task) -> list[str]:
    return [r["pred_response"] for r in json.loads((run_dir / task.name / "pred.json").read_text())]


def test_a_merge_window_reaches_the_model_and_runs_apart(model_and_processor, tasks, tmp_path):
    """--kernel 1 generates what fm.apply with that Merge generates, not the default window's answers."""
    model, processor = model_and_processor
    (default,) = evaluate(model, processor, tasks[:1], ["future"], tmp_path, _config(merge="kernel"))
    (window,) = evaluate(model, processor, tasks[:1], ["future"], tmp_path, _config(merge=WINDOW))
    assert (default.name, window.name) == ("tiny__future__merge-kernel", "tiny__future__merge-kernel-k1")
    assert json.loads((window / "run.json").read_text())["merge"] == "kernel-k1"
    got = _preds(window, tasks[0])
    assert got != _preds(default, tasks[0])  # the window changes answers on this model
    for run_dir in (default, window):
        score_run(tasks[0].path.parent.parent, run_dir, [tasks[0].name], progress=False)
    (columns,) = [line for line in build_report(tmp_path).splitlines() if line.startswith("| Task |")]
    assert columns.endswith("| future+kernel | future+kernel-k1 |")  # the report's columns name both windows
    records = json.loads((window / tasks[0].name / "pred.json").read_text())
    for sample, record in zip(tasks[0].samples, records, strict=True):  # each as fm.apply(merge=WINDOW) answers
        text = "USER: " + record["question"].replace("<ImageHere>", " <image> ") + " ASSISTANT:"  # as above
        inputs = processor(text=[text], images=[Image.open(p).convert("RGB") for p in sample.image_paths],
                           return_tensors="pt")
        with fm.apply(model, "future", merge=WINDOW), torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=1, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        assert record["pred_response"] == processor.batch_decode(new, skip_special_tokens=True)[0].strip()


def test_a_run_never_resumes_under_another_window(model_and_processor, tasks, tmp_path, monkeypatch):
    model, processor = model_and_processor
    one = [replace(tasks[0], samples=tasks[0].samples[:2])]
    (window,) = evaluate(model, processor, one, ["future"], tmp_path, _config(merge=WINDOW))
    with pytest.raises(ValueError, match="merge='kernel-k1'.*--overwrite"):  # the folder of another window
        runner.check_run_dir(window, _config(policy="future", merge=fm.Merge("kernel", kernel=2)), one)
    # the default Merge keeps the old spelling, so folders written before windows existed still resume
    assert run_name("tiny", "future", fm.Merge()) == run_name("tiny", "future", "kernel") == "tiny__future__merge-kernel"
    assert _config(merge=fm.Merge()).settings()["merge"] == "kernel"
    evaluate(model, processor, one, ["future"], tmp_path, _config(merge="kernel"))
    monkeypatch.setattr(runner, "generate_batch", lambda *a, **k: pytest.fail("regenerated a finished run"))
    evaluate(model, processor, one, ["future"], tmp_path, _config(merge=fm.Merge(kind="kernel", kernel=3)))
    evaluate(model, processor, one, ["future"], tmp_path, _config(merge=fm.Merge("kernel", kernel=1)))
