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
from futuremask.bench import PromptShape, SyntheticSize, bench, synthetic_llava, synthetic_prompt
from futuremask.bench.memory import PeakMemory, rss_supported
from futuremask.bench.run import _MaskSpy, attended_pairs, variants
from futuremask.cli import main
from futuremask.kernels import blocked, sdpa
from futuremask.layout import TokenLayout
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

    real = fm_hf.overlay_mod

    def spy(policy, layout):
        mod = real(policy, layout)
        made.append(state["step"])
        return (
            None if mod is None else (lambda b, h, q, kv: evaluated.append(state["step"]) or mod(b, h, q, kv))
        )

    monkeypatch.setattr(fm_hf, "overlay_mod", spy)
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


def test_blocked_path_in_model_plans_once_and_matches_plain_sdpa(tiny, monkeypatch):
    inputs = _prompt(tiny, tokens_per_image=24, text_tokens=30)  # 78 tokens
    plans = []
    real_plan = blocked.plan
    monkeypatch.setattr(blocked, "plan", lambda *a, **k: plans.append(1) or real_plan(*a, **k))
    for policy in ("future", "mma"):
        monkeypatch.setattr(sdpa, "MIN_BLOCKED_ROWS", 10**9)
        with fm.apply(tiny, policy), torch.no_grad():
            plain = tiny(**inputs).logits
        assert plans == []
        monkeypatch.setattr(sdpa, "MIN_BLOCKED_ROWS", 16)
        with fm.apply(tiny, policy), torch.no_grad():
            fast = tiny(**inputs).logits
        assert len(plans) == 1  # once for both layers
        plans.clear()
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


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
            "--hidden",
            "32",
            "--layers",
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
            "--new-tokens",
            "2",
            "--repeats",
            "1",
            "--policies",
            "causal",
            "future",
            "--merge",
            "none",
            "kernel",
            "--no-kernel-bench",
            "--no-exact-rss",
            "--json",
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


_SMALL = ["bench", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "64",
          "--images", "1", "--tokens-per-image", "4", "--text-tokens", "5", "--new-tokens", "2", "--repeats", "1",
          "--policies", "causal", "--merge", "none", "--no-kernel-bench", "--no-exact-rss", "--no-progress"]


def test_cli_bench_writes_a_png_only_with_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(_SMALL) == 0
    assert list(tmp_path.iterdir()) == [] and "plot written" not in capsys.readouterr().out
    assert main([*_SMALL, "--plot"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["bench.png"]
    assert "plot written to bench.png" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--batch", "0"], "--batch must be at least 1, got 0"),
    (["--new-tokens", "1"], "--new-tokens must be at least 2, got 1"),
    (["--model", "./no-such-model"], "--model ./no-such-model: no such folder"),
    (["--plot", "FILE/bench.png"], "is a file, not a folder; choose another --plot"),
    (["--json", "FILE/b.json"], "is a file, not a folder; choose another --json"),
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
