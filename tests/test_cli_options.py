"""The shared CLI options: one spelling per concept, old spellings as warning aliases, choices from the registries."""

import json
import subprocess
import sys

import pytest

import futuremask as fm
from futuremask import names, policies
from futuremask.cli import build_parser, main
from futuremask.cli.options import merge_from_args, merges_from_args

TRAIN = ["train", "--demo"]

# (old command line, the same with the new spelling, the old spelling)
RENAMED = [
    (["bench", "--json", "r.json"], ["bench", "--output", "r.json"], "--json"),
    (["bench", "--batch", "2"], ["bench", "--batch-size", "2"], "--batch"),
    (["bench", "--policies", "future", "mma"], ["bench", "--policy", "future", "mma"], "--policies"),
    (["bench", "--hidden", "32"], ["bench", "--hidden-size", "32"], "--hidden"),
    (["bench", "--no-kernel-bench"], ["bench", "--no-attention-bench"], "--no-kernel-bench"),
    (["bench", "--layers", "2"], ["bench", "--num-layers", "2"], "--layers"),
    (["bench", "--new-tokens", "4"], ["bench", "--max-new-tokens", "4"], "--new-tokens"),
    ([*TRAIN, "--layers", "2", "--output-dir", "o"], [*TRAIN, "--num-layers", "2", "--output-dir", "o"], "--layers"),
    ([*TRAIN, "--init", "ckpt", "--output-dir", "o"], [*TRAIN, "--model", "ckpt", "--output-dir", "o"], "--init"),
    ([*TRAIN, "--out", "runs/x"], [*TRAIN, "--output-dir", "runs/x"], "--out"),
    ([*TRAIN, "--policies", "causal", "mma", "--output-dir", "o"], [*TRAIN, "--policy", "causal", "mma", "--output-dir", "o"],
     "--policies"),
]


def _subparsers(parser):
    """``{command: its parser}`` of the ``futuremask`` parser."""
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


@pytest.mark.parametrize("old,new,spelling", RENAMED, ids=[r[2] + "-" + r[0][0] for r in RENAMED])
def test_an_old_spelling_parses_as_the_new_one_and_says_so(old, new, spelling, capsys):
    want = vars(build_parser().parse_args(new))
    assert capsys.readouterr().err == ""
    got = vars(build_parser().parse_args(old))
    err = capsys.readouterr().err.strip()
    assert got == want
    new_spelling = next(a for a in new if a.startswith("--") and a not in old)
    assert len(err.splitlines()) == 1 and f"{spelling} is deprecated" in err and f"use {new_spelling}" in err


@pytest.mark.parametrize("old,new,spelling", RENAMED, ids=[r[2] + "-" + r[0][0] for r in RENAMED])
def test_an_old_spelling_is_hidden_and_excludes_the_new_one(old, new, spelling, capsys):
    command = _subparsers(build_parser())[old[0]]
    assert f"{spelling} " not in command.format_help() and f"{spelling}\n" not in command.format_help()
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*old, *new[next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b):]])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_the_old_required_spelling_meets_required(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(TRAIN)
    err = capsys.readouterr().err
    assert "one of the arguments --output-dir is required" in err and "--out " not in err
    assert build_parser().parse_args([*TRAIN, "--out", "x"]).output_dir == "x"


def test_an_old_spelling_still_runs_a_command(tmp_path, capsys):
    """bench --json writes the records file --output would (a 1-layer model, one variant)."""
    small = ["bench", "--hidden-size", "16", "--num-layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "32",
             "--images", "1", "--tokens-per-image", "2", "--text-tokens", "3", "--max-new-tokens", "2", "--repeats", "1",
             "--policy", "causal", "--merge", "none", "--no-attention-bench", "--no-exact-rss", "--no-progress"]
    assert main([*small, "--json", str(tmp_path / "old.json")]) == 0
    assert "--json is deprecated" in capsys.readouterr().err
    records = json.loads((tmp_path / "old.json").read_text())
    assert [(r["policy"], r["merge"], r["prompt_tokens"]) for r in records] == [("causal", None, 5)]


def _options(parser):
    """Every ``(command, action)`` of the parser whose option strings hold a long flag."""
    for command, sub in _subparsers(parser).items():
        for action in sub._actions:
            yield command, action


REGISTRIES = {
    "--merge": lambda: set(names.MERGE_KINDS),
    "--backend": lambda: set(names.BACKENDS),
    "--pool": lambda: set(names.POOLS),
    "--dtype": lambda: {"auto", *names.DTYPES},
}


def test_choices_come_from_the_registries():
    """--merge/--backend/--pool/--dtype offer names.py's lists (several-kind merges add none); --policy the registry,
    live: a policy registered later is offered by the next parser."""
    seen = set()

    @fm.register_policy("_test_cli_policy")
    def _extra(lay, b, q, kv):
        """nothing extra"""
        return q < 0

    try:
        for command, action in _options(build_parser()):
            for flag, registry in REGISTRIES.items():
                if flag in action.option_strings:
                    seen.add((command, flag))
                    assert set(action.choices) - {"none"} == registry(), (command, flag)
            if "--policy" in action.option_strings and action.choices is not None:
                seen.add((command, "--policy"))
                assert set(policies.accepted_names()) <= set(action.choices), command
                assert "_test_cli_policy" in action.choices
                assert set(action.choices) - set(policies.accepted_names()) <= {names.MERGE_PANEL}, command
    finally:
        del policies._REGISTRY["_test_cli_policy"]
    merges = {c for c, f in seen if f == "--merge"}
    assert merges == {"eval", "tune", "bench", "train", "verify", "attention-map"}
    assert {c for c, f in seen if f == "--policy"} == {"eval", "tune", "bench", "train", "verify", "show-mask"}
    assert {c for c, f in seen if f == "--pool"} == merges


def test_dtype_and_device_have_one_default():
    """Every command that loads weights defaults to auto for both (checkpoint.resolve_dtype/resolve_device)."""
    defaults = {(command, flag): action.default for command, action in _options(build_parser())
                for flag in ("--dtype", "--device") if flag in action.option_strings}
    assert {c for c, _ in defaults} == {"eval", "tune", "verify", "attention-map", "bench"}
    assert set(defaults.values()) == {"auto"}


@pytest.mark.parametrize("command", [["verify", "--model", "m"], ["attention-map"], [*TRAIN, "--output-dir", "o"]])
def test_a_whole_merge_from_the_command_line(command):
    args = build_parser().parse_args([*command, "--merge", "kernel", "--kernel", "5", "--pool", "mean", "--prefix", "2"])
    assert merge_from_args(args) == fm.Merge(kind="kernel", kernel=5, pool="mean", prefix=2)
    assert merge_from_args(build_parser().parse_args([*command, "--merge", "lse", "--prefix", "2"])) == \
        fm.Merge(kind="lse", prefix=2)
    assert merge_from_args(build_parser().parse_args(command)) is None
    with pytest.raises(ValueError, match="--pool mean shapes only --merge kernel, and --merge lse does not read it"):
        merge_from_args(build_parser().parse_args([*command, "--merge", "lse", "--pool", "mean"]))


def test_several_kinds_each_take_the_window_they_read():
    args = build_parser().parse_args(["bench", "--merge", "none", "kernel", "lse", "--kernel", "5", "--prefix", "2"])
    assert merges_from_args(args) == [None, fm.Merge("kernel", kernel=5, prefix=2), fm.Merge("lse", prefix=2)]
    with pytest.raises(ValueError, match="--kernel 5 shapes only --merge kernel, and --merge lse does not read it"):
        merges_from_args(build_parser().parse_args(["bench", "--merge", "none", "lse", "--kernel", "5"]))


@pytest.mark.parametrize("command", [
    ["eval", "--demo"],
    ["tune", "--data-dir", "d", "--model", "m", "--merge", "none"],
    ["bench", "--merge", "none"],
    ["verify", "--model", "m"],
    [*TRAIN, "--output-dir", "o"],
])
def test_a_window_without_a_merge_is_refused(command, tmp_path, monkeypatch, capsys):
    """--kernel with no merge asked for would change nothing: refused before any work, not dropped."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("futuremask.checkpoint.check_model_source", lambda *a, **k: None)
    monkeypatch.setattr("futuremask.checkpoint.load_checkpoint", lambda *a, **k: pytest.fail("loaded a model"))
    assert main([*command, "--kernel", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "drop --kernel 5" in err and "no merge is asked for" in err
    assert list(tmp_path.iterdir()) == []


RECORD = {"label": "future", "prefill_ms": 12.0, "prefill_ms_min": 11.0, "prefill_ms_max": 13.0,
          "prefill_ratio": 1.25, "pairs_ratio": 1.5, "attn_ms": None, "attn_ratio": None,
          "decode_ms_per_token": 3.0, "decode_ratio": 1.0, "peak_mem_mb": 100.0, "mem_ratio": 1.1, "mask_share": 0.02}


@pytest.mark.parametrize("entry", [
    ["-m", "futuremask.cli", "bench-report"],
    ["-m", "futuremask.bench.report"],  # the old entry (docs/bench.md), the same command
])
def test_bench_report_prints_a_saved_run(tmp_path, entry):
    path = tmp_path / "run.json"
    path.write_text(json.dumps([RECORD]))
    out = subprocess.run([sys.executable, *entry, str(path), "--markdown"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("| variant | prefill ms | x causal |") and out[1].startswith("|---|")
    assert out[2] == "| future | 12 ±1 | 1.250 | 1.500 | - | - | 3.0 ±0.0 | 1.000 | 100 ±0 | 1.100 | 2.00 |"
    assert len(out) == 3


def test_bench_report_names_a_bad_file(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    assert main(["bench-report", str(tmp_path / "run.json")]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and len(err.strip().splitlines()) == 1


def test_attention_map_panels_take_the_window_their_merge_reads(capsys):
    from futuremask.cli.viz import parse_policies

    args = build_parser().parse_args(["attention-map", "--kernel", "5", "--prefix", "2"])
    assert parse_policies(["original", "future+kernel", "mma+lse"], args) == [
        ("causal", None), ("future", fm.Merge("kernel", kernel=5, prefix=2)), ("mma", fm.Merge("lse", prefix=2))]
    assert main(["attention-map", "--policy", "future", "--kernel", "5"]) == 2  # before any model is built
    assert "--kernel 5 shapes only --merge kernel, and no merge is asked for" in capsys.readouterr().err
