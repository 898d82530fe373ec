"""futuremask tune: the split, the choice rule on dev only, held-out measurement, policy maps.

The model's answers are planted: ``runner.generate_batch`` is replaced by a function of (policy, sample)
that answers right or wrong as each test decides, so the signal on dev and on held-out is known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from futuremask.cli import main
from futuremask.eval import runner
from futuremask.eval.data import load_tasks
from futuremask.eval.demo import DEMO_CHECKPOINT, DEMO_WORDS, generate_demo_data
from futuremask.eval.tune import (
    BASELINE,
    Candidate,
    candidates,
    choose,
    read_policy_map,
    run_policy_map,
    split_ids,
    tune,
)
from futuremask.tiny import tiny_llava

TASKS = ["DemoColor", "DemoFind"]
SAMPLES = 40


@pytest.fixture(scope="module")
def model_and_processor():
    return tiny_llava(words=list(DEMO_WORDS), seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune-data")
    generate_demo_data(root, samples_per_task=SAMPLES, seed=2, tasks=TASKS)
    return root


def _config(**kw) -> runner.RunConfig:
    return runner.RunConfig(**{"model": "tiny", "policy": "causal", "max_new_tokens": 4, "progress": False,
                               "batch_size": 8, **kw})


def _wrong(sample) -> str:
    return next(c for c in sample.choice_list if c != sample.response)


def plant(monkeypatch, right, calls: list | None = None, watch: Path | None = None):
    """Answers: ``right(task, sample_id, policy_label) -> bool`` decides each prediction.

    ``calls`` collects ``(task, sample id, policy label, watch.exists())`` per prediction.
    """

    def generate(model, processor, prompts, gen_kwargs, **style_kwargs):
        handle = model._futuremask
        label = Candidate(handle.policy.name, handle.merge).label
        out = []
        for p in prompts:
            if calls is not None:
                calls.append((p.sample.task, str(p.sample.sample_id), label, watch is not None and watch.exists()))
            ok = right(p.sample.task, int(p.sample.sample_id), label)
            out.append(p.sample.response if ok else _wrong(p.sample))
        return out

    monkeypatch.setattr(runner, "generate_batch", generate)


def _split(data, seed=0):
    return {t.name: split_ids(t, 0.5, seed) for t in load_tasks(data, TASKS)}


def test_split_is_deterministic_disjoint_and_covers_every_sample(data):
    task = load_tasks(data, ["DemoColor"])[0]
    dev, held = split_ids(task, 0.5, seed=0)
    assert split_ids(task, 0.5, seed=0) == (dev, held)
    assert len(dev) == len(held) == SAMPLES // 2 and not set(dev) & set(held)
    assert sorted(dev + held, key=int) == [str(s.sample_id) for s in task.samples]
    assert split_ids(task, 0.5, seed=1) != (dev, held)
    assert len(split_ids(task, 0.25, seed=0)[0]) == 10
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_ids(task, 1.0, 0)
    with pytest.raises(ValueError, match="both parts non-empty"):
        split_ids(task, 0.01, 0)


def test_choice_rule_keeps_causal_for_ties_and_wins_within_noise():
    base = [1, 0] * 10
    scores = {"T": {BASELINE: base, Candidate("future"): [1, 1] + base[2:],  # one net win: noise
                    Candidate("mma"): base}}  # a tie
    cands = [BASELINE, Candidate("future"), Candidate("mma")]
    noise = choose(scores, cands, resamples=2000)["T"]
    assert noise.chosen == BASELINE and noise.argmax == Candidate("future")  # the argmax would take the noise
    strong = {"T": {BASELINE: base, Candidate("future"): [1] * 20, Candidate("mma"): [1] * 20}}
    got = choose(strong, cands, accuracy={"T": True}, resamples=2000)["T"]
    assert got.chosen == Candidate("future")  # equal wins: the one listed first
    assert got.dev["future"].p_mcnemar == pytest.approx(2 / 2**10)


def _held_out_only_signal(split, strong_held_out: bool):
    """causal right on even ids; mma right on every DemoFind dev sample; with ``strong_held_out``, mma is
    also right on every DemoColor *held-out* sample (a signal the choice must not see)."""

    def right(task, sid, label):
        causal = sid % 2 == 0
        if label == "mma" and task == "DemoFind" and str(sid) in split["DemoFind"][0]:
            return True
        if label == "mma" and strong_held_out and task == "DemoColor" and str(sid) in split["DemoColor"][1]:
            return True
        return causal

    return right


def test_a_held_out_only_signal_does_not_change_the_choice(monkeypatch, model_and_processor, data, tmp_path):
    model, processor = model_and_processor
    tasks = load_tasks(data, TASKS)
    split = _split(data)
    cands = candidates(["future", "mma"], [None])
    results = {}
    for planted in (False, True):
        out = tmp_path / f"planted-{planted}"
        calls: list = []
        plant(monkeypatch, _held_out_only_signal(split, planted), calls, watch=out / "policy_map.json")
        results[planted] = tune(model, processor, tasks, data, cands, out, _config(), resamples=2000)
        # every held-out prediction is made after the policy map is written; every dev one before
        held = [made_after for t, sid, _, made_after in calls if sid in split[t][1]]
        dev = [made_after for t, sid, _, made_after in calls if sid in split[t][0]]
        assert held and all(held) and dev and not any(dev)
        assert json.loads((out / "policy_map.json").read_text()) == results[planted]["policy_map"]
    quiet, loud = results[False], results[True]
    want = {"DemoColor": {"policy": "causal", "merge": None}, "DemoFind": {"policy": "mma", "merge": None}}
    assert quiet["policy_map"] == loud["policy_map"] == want
    assert loud["overall"]["best_single"] == {"policy": "mma", "merge": None}
    for task in TASKS:
        assert loud["tasks"][task]["dev"] == quiet["tasks"][task]["dev"]
    # the planted signal is real and reaches the held-out comparison, after the choice
    assert loud["overall"]["best_single_vs_causal"]["delta"] > quiet["overall"]["best_single_vs_causal"]["delta"]
    # DemoFind: mma wins every odd dev sample and nothing on held-out
    odd = sum(int(i) % 2 for i in split["DemoFind"][0]) / len(split["DemoFind"][0])
    find = loud["tasks"]["DemoFind"]
    assert find["dev"]["mma"]["delta"] == pytest.approx(odd) and find["dev"]["mma"]["significant"]
    assert find["heldout_map_vs_causal"]["delta"] == 0.0 and not find["heldout_map_vs_causal"]["significant"]
    assert loud["tasks"]["DemoColor"]["dev_argmax"] == {"policy": "causal", "merge": None}  # a dev tie


def test_runs_hold_only_their_split(monkeypatch, model_and_processor, data, tmp_path):
    model, processor = model_and_processor
    split = _split(data)
    plant(monkeypatch, _held_out_only_signal(split, True))
    result = tune(model, processor, load_tasks(data, TASKS), data, candidates(["mma"], [None]), tmp_path,
                  _config(), resamples=500)
    recorded = json.loads((tmp_path / "split.json").read_text())["tasks"]
    for task in TASKS:
        assert (recorded[task]["dev"], recorded[task]["heldout"]) == split[task]
        for part, ids in (("dev", split[task][0]), ("heldout", split[task][1])):
            for run_dir in (tmp_path / part).iterdir():
                preds = json.loads((run_dir / task / "pred.json").read_text())
                assert sorted(str(r["sample_id"]) for r in preds) == sorted(ids)
    assert set(result["runs"]["heldout"]) == {"causal", "mma"}
    assert "map vs causal" in (tmp_path / "tune.md").read_text()


def test_run_policy_map_runs_each_task_under_its_policy(monkeypatch, model_and_processor, data, tmp_path):
    model, processor = model_and_processor
    seen: list = []
    plant(monkeypatch, lambda task, sid, label: True, seen)
    path = tmp_path / "policy_map.json"
    path.write_text(json.dumps({"DemoColor": {"policy": "original", "merge": None},
                                "DemoFind": {"policy": "future_v2v", "merge": "lse"}}))
    policy_map = read_policy_map(path)
    assert policy_map["DemoColor"] == BASELINE  # aliases resolve
    tasks = load_tasks(data, TASKS, limit=4)
    folders = run_policy_map(model, processor, tasks, policy_map, tmp_path / "runs", _config())
    assert folders["DemoFind"].name == "tiny__future_v2v__merge-lse"
    assert {(t, label) for t, _, label, _ in seen} == {("DemoColor", "causal"), ("DemoFind", "future_v2v+lse")}
    with pytest.raises(ValueError, match="no entry for tasks"):
        run_policy_map(model, processor, load_tasks(data, TASKS), {"DemoColor": BASELINE}, tmp_path, _config())


def test_cli_refuses_bad_maps_and_splits_before_loading_a_model(data, tmp_path, capsys):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"DemoColor": {"policy": "nope"}}))
    model = str(DEMO_CHECKPOINT)  # a real checkpoint folder: every refusal below comes before it loads
    assert main(["eval", "--data-dir", str(data), "--model", model, "--policy-map", str(bad)]) == 2
    assert "unknown mask policy 'nope'" in capsys.readouterr().err
    assert main(["eval", "--data-dir", str(data), "--model", model, "--policy-map", str(bad),
                 "--policy", "mma"]) == 2
    assert "drop --policy/--merge" in capsys.readouterr().err
    assert main(["tune", "--data-dir", str(data), "--model", model, "--policy", "mma", "--limit", "1"]) == 2
    assert "both parts non-empty" in capsys.readouterr().err
    assert main(["tune", "--data-dir", str(data), "--model", model, "--policy", "causal"]) == 2
    assert "at least one candidate" in capsys.readouterr().err
    assert main(["eval", "--data-dir", str(data), "--model", model, "--layers", "3-1"]) == 2
    assert "'0-15' or '0-7,12'" in capsys.readouterr().err


def test_eval_policy_map_end_to_end_on_the_demo(tmp_path, capsys):
    path = tmp_path / "policy_map.json"
    path.write_text(json.dumps({"DemoColor": {"policy": "mma", "merge": None},
                                "DemoFind": {"policy": "causal", "merge": None}}))
    out = tmp_path / "out"
    args = ["eval", "--demo", "--limit", "4", "--tasks", "DemoColor", "DemoFind", "--policy-map", str(path),
            "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    runs = {p.name: sorted(t.name for t in p.iterdir() if t.is_dir()) for p in (out / "demo").iterdir()}
    assert runs == {"demo-vlm__mma": ["DemoColor"], "demo-vlm__causal": ["DemoFind"]}
    for run, (task,) in runs.items():
        score = json.loads((out / "demo" / run / task / "eval.json").read_text())["Accuracy"]
        assert f"| {task} | {run.split('__')[1]} | {score * 100:.2f} (Accuracy) |" in printed


def test_a_merge_window_is_a_candidate_of_its_own(monkeypatch, model_and_processor, data, tmp_path):
    """kernel and kernel-k5 are two candidates, run apart; the map names the window and eval reads it back."""
    import futuremask as fm

    model, processor = model_and_processor
    window = fm.Merge("kernel", kernel=5)
    plant(monkeypatch, lambda task, sid, label: label == "mma+kernel-k5" or sid % 4 == 0)  # the handle's Merge
    cands = candidates(["mma"], [fm.Merge("kernel"), window])
    assert [c.label for c in cands] == ["causal", "mma+kernel", "mma+kernel-k5"]
    result = tune(model, processor, load_tasks(data, TASKS), data, cands, tmp_path, _config(), resamples=500)
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == [
        "tiny__causal", "tiny__mma__merge-kernel", "tiny__mma__merge-kernel-k5"]
    want = {"policy": "mma", "merge": "kernel-k5"}
    assert json.loads((tmp_path / "policy_map.json").read_text()) == {t: want for t in TASKS}
    assert result["overall"]["best_single"] == want and "| mma+kernel-k5 |" in (tmp_path / "tune.md").read_text()
    assert read_policy_map(tmp_path / "policy_map.json") == {t: Candidate("mma", window) for t in TASKS}


@pytest.mark.parametrize("word", ["kernel-x5", "kernel-k5-k6", "kernel-k0", "huge", "lse-max-mean"])
def test_a_policy_map_with_an_unreadable_merge_is_refused(word, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"DemoColor": {"policy": "mma", "merge": word}}))
    with pytest.raises(ValueError, match="entry 'DemoColor'.*(cannot read|unknown merge kind|>= 1)"):
        read_policy_map(path)
