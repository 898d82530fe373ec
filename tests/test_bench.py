"""The benchmark and the model-level mechanisms behind its figures (no timings are asserted).

* decoding steps build no policy overlay: one overlay per generate() call, for the prompt pass;
* the mask builder runs once per forward, and blocked SDPA plans once per forward (not per layer);
* the blocked path gives the same logits as plain SDPA inside a model;
* the synthetic prompt has the documented layout; attended pairs are counted exactly;
* the JSON records hold the required fields and every ratio is value / causal of the same run.
"""

from __future__ import annotations

import json

import pytest
import torch

import futuremask as fm
import futuremask.hf as fm_hf
import futuremask.hf_masks as fm_masks
from futuremask.bench import PromptShape, SyntheticSize, bench, synthetic_llava, synthetic_prompt
from futuremask.bench.memory import PeakMemory, rss_supported
from futuremask.bench.run import _MaskSpy, attended_pairs, variants
from futuremask.cli import main
from futuremask.kernels import blocked, sdpa
from futuremask.layout import TokenLayout
from futuremask.names import BENCH_POLICIES
from futuremask.policies import policy_mask

TINY = SyntheticSize(hidden=32, layers=2, heads=4, kv_heads=2, vocab=64, max_positions=1024)


@pytest.fixture(scope="module")
def tiny():
    return synthetic_llava(TINY)


def _prompt(model, images=2, tokens_per_image=8, text_tokens=9, batch=1):
    return synthetic_prompt(model.config, PromptShape(images, tokens_per_image, text_tokens, batch))


def test_synthetic_prompt_layout(tiny):
    ids = _prompt(tiny, images=2, tokens_per_image=3, text_tokens=6)["input_ids"][0]
    image = tiny.config.image_token_id
    assert ids.shape == (12,)
    assert ids[0] == 1  # BOS
    # text 2, image 3, text 2, image 3, text 2
    assert (ids == image).tolist() == [False] * 2 + [True] * 3 + [False] * 2 + [True] * 3 + [False] * 2
    assert int((ids[1:] < 3).sum()) == 0  # no pad / BOS / EOS inside the text


def test_synthetic_model_size_and_heads():
    model = synthetic_llava(
        SyntheticSize(hidden=64, layers=3, heads=4, kv_heads=2, vocab=100, intermediate=96)
    )
    cfg = model.config.text_config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        64,
        3,
        4,
        2,
    )
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 96 + 2 * 64  # q,o + k,v + mlp + two norms
    expected = 3 * per_layer + 64 + 2 * 100 * 64  # final norm, embeddings, untied LM head
    from futuremask.bench.synthetic import parameter_count

    assert parameter_count(model) == expected
    with pytest.raises(ValueError, match="multiple"):
        synthetic_llava(SyntheticSize(hidden=64, heads=5, kv_heads=5))


def test_attended_pairs_counts_the_mask(tiny):
    inputs = _prompt(tiny, tokens_per_image=5, text_tokens=7, batch=2)
    inputs["attention_mask"][1, :3] = 0
    layout = TokenLayout.from_inputs(tiny.config, **inputs)
    for policy in fm.POLICIES:
        assert attended_pairs(policy, layout, rows_per_chunk=4) == int(policy_mask(policy, layout).sum())
    length = layout.length
    assert attended_pairs(
        "causal", TokenLayout.from_inputs(tiny.config, input_ids=inputs["input_ids"][:1])
    ) == (length * (length + 1) // 2)


def test_decode_steps_build_no_overlay(tiny, monkeypatch):
    """The policy's overlay is made once per generate() and never evaluated after the prompt pass."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    made, evaluated, state = [], [], {"step": 0}

    class Steps(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            state["step"] += 1
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    real = fm_masks.overlay_mod

    def spy(policy, layout):
        mod = real(policy, layout)
        made.append(state["step"])
        return (
            None if mod is None else (lambda b, h, q, kv: evaluated.append(state["step"]) or mod(b, h, q, kv))
        )

    monkeypatch.setattr(fm_masks, "overlay_mod", spy)
    inputs = _prompt(tiny)
    length = inputs["input_ids"].shape[1]
    for merge in (None, "kernel", "lse"):
        made.clear()
        evaluated.clear()
        state["step"] = 0
        with fm.apply(tiny, "future", merge=merge):
            out = tiny.generate(
                **inputs,
                max_new_tokens=6,
                min_new_tokens=6,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([Steps()]),
            )
        assert out.shape[1] == length + 6 and state["step"] == 6
        assert made == [0]  # one overlay, for the prompt pass
        assert evaluated and set(evaluated) == {0}  # evaluated during the prompt pass only


def test_mask_builder_runs_once_per_forward(tiny):
    inputs = _prompt(tiny)
    with fm.apply(tiny, "future_v2v"), _MaskSpy() as spy, torch.no_grad():
        tiny(**inputs)
    assert spy.calls == 1  # two layers share one mask
    assert tiny.config.text_config.num_hidden_layers == 2


@pytest.mark.parametrize("padded", [False, True])
def test_blocked_path_in_model_plans_once_and_equals_stock_model_with_dense_mask(tiny, monkeypatch, padded):
    """The structured sdpa path (planned from the policy's rows, no dense mask) against the stock model
    given the dense 4-D mask of fm.build_mask; the plan is made once per forward, for both layers."""
    inputs = _prompt(tiny, tokens_per_image=24, text_tokens=30, batch=2)  # 78 tokens
    if padded:  # row 1 left-padded by 5
        inputs["input_ids"][1, :5] = 0
        inputs["attention_mask"][1, :5] = 0
    visual = inputs["input_ids"] == tiny.config.image_token_id
    valid = inputs["attention_mask"].bool()
    plans = []
    real_plan = blocked.batch_plan  # the whole batch's plan (one plan per batch row inside)
    monkeypatch.setattr(blocked, "batch_plan", lambda *a, **k: plans.append(1) or real_plan(*a, **k))
    monkeypatch.setattr(sdpa, "MIN_BLOCKED_ROWS", 16)
    for policy in ("future", "future_v2v", "future_v2t", "mma", "image_bidirectional"):
        dense = fm.build_mask(policy, visual, attention_mask=inputs["attention_mask"])[:, None]
        with torch.no_grad():
            want = tiny(input_ids=inputs["input_ids"], attention_mask=dense).logits
        plans.clear()
        with fm.apply(tiny, policy), torch.no_grad():
            got = tiny(**inputs).logits
        assert len(plans) == 1  # once for both layers
        assert (got - want)[valid].abs().max() <= 1e-5, policy


def test_variants_put_causal_first_and_skip_causal_merges():
    got = [v.label for v in variants(["original", "future", "mma"], [None, "kernel"])]
    assert got == ["causal", "future", "mma", "future+kernel", "mma+kernel"]


@pytest.mark.skipif(not rss_supported(), reason="peak RSS cannot be reset here")
def test_peak_memory_sees_a_temporary_allocation():
    with PeakMemory("cpu") as mem:
        t = torch.ones(48 * 2**20 // 4)  # 48 MiB, touched
        del t
    assert 44 <= mem.mb <= 80


def test_bench_records_and_ratios(tiny, tmp_path):
    path = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    records = bench(
        tiny,
        images=2,
        tokens_per_image=6,
        text_tokens=9,
        new_tokens=3,
        repeats=2,
        policies=["causal", "future_v2t"],
        merges=[None, "lse"],
        json_path=path,
        plot_path=png,
        progress=False,
        exact_rss=False,
    )
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(records))  # the file holds exactly what was returned
    assert [(r["policy"], r["merge"]) for r in saved] == [
        ("causal", None),
        ("future_v2t", None),
        ("future_v2t", "lse"),
    ]
    causal = saved[0]
    layout = TokenLayout.from_inputs(tiny.config, **_prompt(tiny, 2, 6, 9))
    for r in saved:
        for key in (
            "policy",
            "merge",
            "prefill_ms",
            "decode_ms_per_token",
            "peak_mem_mb",
            "prefill_ratio",
            "decode_ratio",
            "pairs_ratio",
            "mask_share",
            "attn_ms",
            "attn_ratio",
        ):
            assert key in r
        assert r["prefill_ratio"] == pytest.approx(r["prefill_ms"] / causal["prefill_ms"])
        assert r["decode_ratio"] == pytest.approx(r["decode_ms_per_token"] / causal["decode_ms_per_token"])
        assert r["attn_ratio"] == pytest.approx(r["attn_ms"] / causal["attn_ms"])
        if causal["peak_mem_mb"]:
            assert r["mem_ratio"] == pytest.approx(r["peak_mem_mb"] / causal["peak_mem_mb"])
        assert len(r["samples"]["prefill_ms"]) == 2
        assert r["prefill_ms"] == pytest.approx(
            sorted(r["samples"]["prefill_ms"])[0] / 2 + sorted(r["samples"]["prefill_ms"])[1] / 2
        )
        assert r["pairs_ratio"] == pytest.approx(
            int(policy_mask(r["policy"], layout).sum()) / int(policy_mask("causal", layout).sum())
        )
        assert r["mask_calls_per_prefill"] == 1
        assert (r["prompt_tokens"], r["visual_tokens"]) == (21, 12)
    assert causal["prefill_ratio"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bench_writes_json(tmp_path, capsys):
    path = tmp_path / "out.json"
    code = main(
        [
            "bench",
            "--hidden-size",
            "32",
            "--num-layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--vocab",
            "50",
            "--images",
            "1",
            "--tokens-per-image",
            "4",
            "--text-tokens",
            "5",
            "--max-new-tokens",
            "2",
            "--repeats",
            "1",
            "--policy",
            "causal",
            "future",
            "--merge",
            "none",
            "kernel",
            "--no-attention-bench",
            "--no-exact-rss",
            "--output",
            str(path),
            "--plot",
            "",
            "--no-progress",
        ]
    )
    assert code == 0
    records = json.loads(path.read_text())
    assert [(r["policy"], r["merge"]) for r in records] == [
        ("causal", None),
        ("future", None),
        ("future", "kernel"),
    ]
    assert records[1]["attn_ms"] is None
    out = capsys.readouterr().out
    assert "future+kernel" in out and "x causal" in out


def test_merge_prompt_pass_holds_no_dense_mask(tiny, monkeypatch):
    """Without padding the merge kernel gets no L x L tensor: base None (is_causal), future by row chunks."""
    from futuremask.kernels.rows import FutureRows

    seen = []
    real = fm_hf.merge_attention
    monkeypatch.setattr(
        fm_hf,
        "merge_attention",
        lambda q, k, v, base, future, **kw: seen.append((base, future)) or real(q, k, v, base, future, **kw),
    )
    inputs = _prompt(tiny)
    layout = TokenLayout.from_inputs(tiny.config, **inputs)
    with fm.apply(tiny, "future_v2t", merge="kernel"), torch.no_grad():
        tiny(**inputs)
    assert len(seen) == 2  # two layers
    base, future = seen[0]
    assert base is None and isinstance(future, FutureRows)
    rows = torch.arange(layout.length)
    dense = policy_mask("future_v2t", layout)[0] & ~policy_mask("causal", layout)[0]
    assert torch.equal(future.rows(0, rows), dense)
    assert torch.equal(
        future.rows_with_future(0, "cpu", chunk=3 * layout.length), dense.any(-1).nonzero().flatten()
    )


@pytest.mark.parametrize("merge", [None, "kernel", "lse"])
def test_prompt_pass_creates_no_float_tensor_of_l_by_l(tiny, monkeypatch, merge):
    """Every float tensor an aten op returns in the prompt pass is smaller than L x L (no per-head scores)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import futuremask.kernels.merge as merge_kernel

    inputs = _prompt(tiny, tokens_per_image=60, text_tokens=60)  # L = 180, 4 heads
    length = inputs["input_ids"].shape[1]
    monkeypatch.setattr(sdpa, "MIN_BLOCKED_ROWS", 32)  # the blocked path, as for long prompts
    monkeypatch.setattr(merge_kernel, "DEFAULT_CHUNK_BYTES", 4 * 6 * 4 * length * 16)  # 16-row merge chunks
    biggest = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    biggest.append((t.numel(), str(func), tuple(t.shape)))
            return out

    with fm.apply(tiny, "future", merge=merge), torch.no_grad(), Watch():
        tiny(**inputs)
    assert max(biggest)[0] < length * length, max(biggest)


def test_mask_share_is_a_share_of_the_same_prefill(tiny, monkeypatch):
    """mask+plan % is timed inside the prefill with its clock: each round's share is in [0, 1], and the
    record's share is their median (before, a wall-clock mask over a CPU-clock prefill exceeded 100 %)."""
    from futuremask.bench import run as bench_run
    from futuremask.kernels import sdpa

    monkeypatch.setattr(sdpa, "MIN_BLOCKED_ROWS", 8)  # short prompts take the blocked path: plans are timed
    records = bench(tiny, images=1, tokens_per_image=6, text_tokens=9, new_tokens=2, repeats=3,
                    policies=["causal", "future"], merges=[None], kernel_bench=False, progress=False,
                    exact_rss=False)
    future = records[1]
    shares = future["samples"]["mask_share"]
    assert len(shares) == 3 and all(0 < s <= 1 for s in shares)
    assert future["mask_share"] == sorted(shares)[1]
    assert all(p > 0 for p in future["samples"]["plan_ms"])  # the model planned its mask, and it was timed
    for m, p, f, s in zip(*(future["samples"][k] for k in ("mask_ms", "plan_ms", "prefill_ms", "mask_share")),
                          strict=True):
        assert s == pytest.approx((m + p) / f)
    assert bench_run.blocked.cached_plan.__name__ == "cached_plan"  # the spy put the planner back


_SMALL = ["bench", "--hidden-size", "32", "--num-layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "64",
          "--images", "1", "--tokens-per-image", "4", "--text-tokens", "5", "--max-new-tokens", "2", "--repeats", "1",
          "--policy", "causal", "--merge", "none", "--no-attention-bench", "--no-exact-rss", "--no-progress"]


def test_cli_bench_writes_a_png_only_with_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(_SMALL) == 0
    assert list(tmp_path.iterdir()) == [] and "plot written" not in capsys.readouterr().out
    assert main([*_SMALL, "--plot"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["bench.png"]
    assert "plot written to bench.png" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--max-new-tokens", "1"], "--max-new-tokens must be at least 2, got 1"),
    (["--model", "./no-such-model"], "--model ./no-such-model: no such folder"),
    (["--plot", "FILE/bench.png"], "is a file, not a folder; choose another --plot"),
    (["--output", "FILE/b.json"], "is a file, not a folder; choose another --output"),
])
def test_cli_bench_refuses_before_running(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x")
    monkeypatch.setattr("futuremask.bench.api.run_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert main([*_SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]


def test_cli_bench_cuda_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("futuremask.bench.api.run_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert main([*_SMALL, "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_8k():
    return synthetic_llava(SyntheticSize(hidden=32, layers=2, heads=4, kv_heads=2, vocab=64, max_positions=8192))


@pytest.mark.parametrize("policy, merge", [("future", None), ("mma", None), ("future", "kernel"), ("mma", "lse")])
def test_prompt_pass_at_8k_holds_no_tensor_of_l_by_l_elements(tiny_8k, policy, merge):
    """An 8,192-token prompt: no tensor of any dtype (bool masks included) reaches L x L elements."""
    from torch.utils._python_dispatch import TorchDispatchMode

    inputs = synthetic_prompt(tiny_8k.config, PromptShape(2, 2048, 4096, 1))
    length = inputs["input_ids"].shape[1]
    biggest = [(0, "", ())]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.numel() > biggest[0][0]:
                    biggest[0] = (t.numel(), str(func), tuple(t.shape))
            return out

    with fm.apply(tiny_8k, policy, merge=merge), torch.no_grad(), Watch():
        tiny_8k(**inputs)
    assert length == 8192 and biggest[0][0] < length * length, biggest[0]


def test_against_dense_mask_records(tiny):
    from futuremask.bench.against import against_dense_mask, against_table

    inputs = _prompt(tiny, tokens_per_image=12, text_tokens=12)
    records = against_dense_mask(tiny, inputs, ["future", "mma"], repeats=2, exact_rss=False)
    assert [r["policy"] for r in records] == ["future", "mma"]
    for r in records:
        assert r["ratio"] == r["apply_ms"] / r["dense_ms"] and r["apply_ms_min"] <= r["apply_ms"] <= r["apply_ms_max"]
        assert r["prompt_tokens"] == 36 and r["visual_tokens"] == 24
    assert "| mma |" in against_table(records)


def test_eval_throughput_compares_predictions_across_batch_sizes():
    from futuremask.bench.throughput import eval_throughput

    records = eval_throughput((1, 3), ("causal", "future"), merges=(None, "lse"), repeats=2, samples_per_task=3,
                              max_new_tokens=3)
    assert [(r["variant"], r["batch_size"]) for r in records] == [("causal", 1), ("causal", 3), ("future", 1),
                                                                   ("future", 3), ("future+lse", 1), ("future+lse", 3)]
    assert json.loads(json.dumps(records)) == records
    assert [r["merge"] for r in records] == [None, None, None, None, "lse", "lse"]
    causal = {r["batch_size"]: r["speedup"] for r in records if r["variant"] == "causal"}
    for r in records:  # each variant's ratio as a share of the stock model's own
        assert r["of_causal"] == pytest.approx(r["speedup"] / causal[r["batch_size"]])
    assert records[1]["of_causal"] == 1.0
    assert all(r["identical"] for r in records)  # batching changes no answer
    assert records[0]["speedup"] == 1.0 and records[1]["samples"] == records[0]["samples"] > 0
    assert all(r["seconds_min"] <= r["seconds"] <= r["seconds_max"] for r in records)


def test_eval_throughput_sees_an_answer_that_batching_changes(monkeypatch):
    import futuremask.eval.runner as runner
    from futuremask.bench.throughput import eval_throughput

    real = runner.generate_batch

    def batching_changes_the_last_answer(model, processor, prompts, *args, **kwargs):
        answers = real(model, processor, prompts, *args, **kwargs)
        return answers[:-1] + [answers[-1] + " x"] if len(prompts) > 1 else answers

    monkeypatch.setattr(runner, "generate_batch", batching_changes_the_last_answer)
    records = eval_throughput((1, 3), ("future",), repeats=1, samples_per_task=3, max_new_tokens=2)
    assert [r["identical"] for r in records] == [True, False]
    assert [r["of_causal"] for r in records] == [None, None]  # no stock model measured to compare with


@pytest.mark.parametrize("given, policies, merges", [
    ([], ["causal", "future"], [None]),
    # the prefill bench's own defaults, asked for by name, are measured as asked
    (["--policy", *BENCH_POLICIES, "--merge", "none", "kernel"], list(BENCH_POLICIES),
     [None, fm.Merge("kernel")]),
    (["--policy", "mma", "--merge", "lse"], ["mma"], [fm.Merge("lse")]),
])
def test_cli_eval_throughput_measures_what_is_asked(monkeypatch, capsys, given, policies, merges):
    from futuremask.bench import throughput

    asked = []
    monkeypatch.setattr(throughput, "eval_throughput", lambda sizes, policies, *, merges, repeats, clock:
                        asked.append((list(sizes), policies, merges)) or [])
    assert main(["bench", "--eval-throughput", "--repeats", "1", *given]) == 0
    assert asked == [([1, 8], policies, merges)]


def test_cli_eval_throughput_refuses_a_window_without_a_merge(capsys):
    assert main(["bench", "--eval-throughput", "--kernel", "5"]) == 2
    assert "no merge is asked for" in capsys.readouterr().err


def test_cli_bench_measures_the_whole_merge(tmp_path, monkeypatch, capsys):
    """--kernel/--pool reach fm.apply and the attention timer, and name the variant in records and table."""
    from futuremask.bench import kernel, run

    window = fm.Merge("kernel", kernel=1, pool="mean")
    applied, timed = [], []
    real_apply, real_attention = run.apply, kernel.merge_attention
    monkeypatch.setattr(run, "apply", lambda *a, merge=None, **k: applied.append(merge) or real_apply(*a, merge=merge, **k))
    monkeypatch.setattr(kernel, "merge_attention",
                        lambda *a, merge, **k: timed.append(merge) or real_attention(*a, merge=merge, **k))
    path = tmp_path / "out.json"
    assert main(["bench", "--hidden-size", "32", "--num-layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab",
                 "50", "--images", "1", "--tokens-per-image", "4", "--text-tokens", "5", "--max-new-tokens", "2",
                 "--repeats", "1", "--policy", "future", "--merge", "none", "kernel", "--kernel", "1", "--pool", "mean",
                 "--no-exact-rss", "--output", str(path), "--no-progress"]) == 0
    records = json.loads(path.read_text())
    assert [(r["policy"], r["merge"], r["label"]) for r in records] == [
        ("causal", None, "causal"), ("future", None, "future"), ("future", "kernel-k1-mean", "future+kernel-k1-mean")]
    assert set(applied) == {None, window} and set(timed) == {window}
    assert "future+kernel-k1-mean" in capsys.readouterr().out
    assert [v.label for v in variants(["future"], [None, "kernel", window])] == [
        "causal", "future", "future+kernel", "future+kernel-k1-mean"]
