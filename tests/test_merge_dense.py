"""The merge kernel's whole-pass path (kernels/merge_dense.py): a small pass merges every batch row at once.

Each test compares it with an independent computation: fm.attention's literal row-by-row merge, or
the same rows merged one batch row at a time by the run path (no whole-pass path).
"""

from __future__ import annotations

import pytest
import torch

import futuremask as fm
import futuremask.kernels.merge as merge_kernel
import futuremask.kernels.merge_dense as merge_dense
from futuremask.kernels import merge_attention
from futuremask.layout import TokenLayout

MERGES = [fm.Merge("kernel"), fm.Merge("kernel", kernel=4, pool="mean"), fm.Merge("kernel", kernel=20),
          fm.Merge("lse")]
MERGE_IDS = ["kernel-max-k3", "kernel-mean-k4", "kernel-k20-every-row-short", "lse"]


def _batch(batch: int = 4, length: int = 40, seed: int = 0, dtype=torch.float64):
    """Different prompts in one left-padded batch: 1-3 images each, a continuation on row 0, two
    packed sequences on row 1."""
    g = torch.Generator().manual_seed(seed)
    vis = torch.zeros(batch, length, dtype=torch.bool)
    attn = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        pad = 3 * b
        attn[b, :pad] = 0
        for start in range(pad + 2, length - 8, 12 + b):
            vis[b, start : start + 5 + b] = True
    prompt = attn.bool().clone()
    prompt[0, -5:] = False  # a supervised continuation: its windows stop before it
    positions = torch.arange(length).expand(batch, -1).clone()
    positions[1, 20:] = torch.arange(length - 20)  # row 1: a second packed sequence from position 20
    layout = TokenLayout.from_masks(vis, attention_mask=attn, prompt_mask=prompt, position_ids=positions)
    inputs = dict(is_visual=vis, attention_mask=attn, prompt_mask=prompt, position_ids=positions)
    q = torch.randn(batch, 4, length, 8, generator=g, dtype=dtype)
    k = torch.randn(batch, 2, length, 8, generator=g, dtype=dtype)
    v = torch.randn(batch, 2, length, 8, generator=g, dtype=dtype)
    return q, k, v, layout, inputs


def _merge(q, k, v, layout, inputs, policy, merge, **kw):
    base = fm.build_mask("causal", **inputs)
    future = fm.build_mask(policy, **inputs) & ~base
    return merge_attention(q, k, v, base, future, merge=merge, prefix_positions=layout.sequence_sinks(merge.prefix),
                           prompt_end=layout.segment_end, **kw)


@pytest.fixture
def whole_pass_calls(monkeypatch):
    """How many calls took the whole-pass path."""
    calls = []
    chosen = merge_dense.merged_rows
    monkeypatch.setattr(merge_kernel, "merged_rows", lambda *a: calls.append(1) or chosen(*a))
    return calls


@pytest.mark.parametrize("merge", MERGES, ids=MERGE_IDS)
@pytest.mark.parametrize("policy", ["future", "future_v2v", "future_v2t", "mma"])
def test_whole_pass_equals_the_literal_merge(policy, merge, whole_pass_calls):
    q, k, v, layout, inputs = _batch()
    got = _merge(q, k, v, layout, inputs, policy, merge)
    want = fm.attention(q, k, v, policy=policy, merge=merge, **inputs)
    assert whole_pass_calls  # the small pass took the whole-pass path
    valid = inputs["attention_mask"].bool()[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[valid], want[valid], atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("merge", MERGES + [fm.Merge("lse", prefix=2)], ids=MERGE_IDS + ["lse-p2"])
def test_whole_pass_equals_each_batch_row_by_the_run_path(merge, monkeypatch):
    """float32 queries laid out as transformers hands them (a transposed view): the batch at once
    equals each batch row alone through the run path."""
    q, k, v, layout, inputs = _batch(dtype=torch.float32)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, H, L, D] over [B, L, H, D] memory
    got = _merge(q, k, v, layout, inputs, "future", merge)
    monkeypatch.setattr(merge_dense, "DENSE_BYTES", 0)
    for b in range(q.shape[0]):
        one = {name: t[b : b + 1] for name, t in inputs.items()}
        alone = _merge(q[b : b + 1], k[b : b + 1], v[b : b + 1], TokenLayout.from_masks(**one), one, "future", merge)
        valid = one["attention_mask"].bool()[:, None, :, None].expand_as(alone)
        torch.testing.assert_close(got[b : b + 1][valid], alone[valid], atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("merge", [fm.Merge("kernel"), fm.Merge("lse")], ids=["kernel", "lse"])
def test_explicit_whole_pass_equals_the_literal_merge(merge):
    """The re-attending form (used off the CPU, for prefix > 1 and for the rows the sink formula cannot
    serve) on its own, one prefix position."""
    q, k, v, layout, inputs = _batch(seed=3)
    base = fm.build_mask("causal", **inputs)
    future = fm.build_mask("future", **inputs) & ~base
    rows = merge_kernel._DenseRows(future[:, None], base[:, None])
    chosen = merge_dense.merged_rows(rows, layout.sequence_sinks(1), layout.segment_end)
    out = merge_kernel.sdpa_attention(q, k, v, base[:, None], scale=8**-0.5)
    got = merge_dense.merge_rows_dense(q, k, v, out, chosen, merge, 8**-0.5)
    want = fm.attention(q, k, v, policy="future", merge=merge, **inputs)
    valid = inputs["attention_mask"].bool()[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[valid], want[valid], atol=1e-10, rtol=1e-9)


def test_rows_the_sink_formula_cannot_serve_are_recomputed_alone(monkeypatch, whole_pass_calls):
    """A sink holding nearly all of a row's weight and losing it: only those rows are re-attended, and
    the result is the literal merge."""
    recomputed = []
    dense = merge_dense.merge_rows_dense
    monkeypatch.setattr(merge_dense, "merge_rows_dense",
                        lambda q, k, v, out, chosen, *a: recomputed.append(chosen) or dense(q, k, v, out, chosen, *a))
    length, dim = 12, 4
    vis = torch.zeros(2, length, dtype=torch.bool)
    vis[:, 2:8] = True
    inputs = dict(is_visual=vis)
    q = torch.zeros(2, 1, length, dim, dtype=torch.float64)
    k = torch.zeros(2, 1, length, dim, dtype=torch.float64)
    q[..., 0] = 1.0
    k[:, 0, 0, 0] = 40.0  # the sink's score dominates every row ...
    k[0, 0, 9:, 0] = -400.0  # ... and in batch row 0 the future text pulls the pooled bonus far below zero
    v = torch.randn(2, 1, length, dim, dtype=torch.float64)
    layout = TokenLayout.from_masks(vis)
    got = _merge(q, k, v, layout, inputs, "future", fm.Merge(), scale=1.0)
    assert whole_pass_calls and len(recomputed) == 1
    rows = recomputed[0]
    assert rows.real[1].sum() == 0 and set(rows.index[0][rows.real[0]].tolist()) <= set(range(2, 8))
    want = fm.attention(q, k, v, policy="future", merge=fm.Merge(), scale=1.0, **inputs)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-9)


def test_a_small_batch_pays_no_per_run_work_and_a_large_pass_keeps_the_run_path(monkeypatch, whole_pass_calls):
    """The whole-pass path replaces the per-run loop for a small pass (no ``_merge_run`` call whatever
    the batch size); a pass over :data:`DENSE_BYTES` of scores, or over ``chunk_bytes``, runs by runs."""
    runs = []
    real = merge_kernel._merge_run
    monkeypatch.setattr(merge_kernel, "_merge_run", lambda *a: runs.append(1) or real(*a))
    q, k, v, layout, inputs = _batch(batch=8, dtype=torch.float32)
    with torch.no_grad():
        _merge(q, k, v, layout, inputs, "future", fm.Merge("lse"))
        assert whole_pass_calls and not runs
        scores = q.shape[0] * q.shape[1] * q.shape[2] ** 2 * 4
        monkeypatch.setattr(merge_dense, "DENSE_BYTES", scores - 1)
        _merge(q, k, v, layout, inputs, "future", fm.Merge("lse"))
        monkeypatch.setattr(merge_dense, "DENSE_BYTES", scores)
        _merge(q, k, v, layout, inputs, "future", fm.Merge("lse"), chunk_bytes=scores - 1)
    assert len(whole_pass_calls) == 1 and len(runs) > 2 * q.shape[0]


def test_training_keeps_the_autograd_path(whole_pass_calls):
    """With gradients the whole-pass path is not taken (it writes rows in place), and gradients reach q."""
    q, k, v, layout, inputs = _batch()
    q.requires_grad_()
    out = _merge(q, k, v, layout, inputs, "future", fm.Merge("lse"))
    out.sum().backward()
    assert not whole_pass_calls and q.grad is not None and torch.isfinite(q.grad).all()


def test_bfloat16_inputs_keep_their_dtype_and_match_float32():
    q, k, v, layout, inputs = _batch(dtype=torch.float32)
    for merge in (fm.Merge("kernel"), fm.Merge("lse")):
        want = _merge(q, k, v, layout, inputs, "future", merge)
        got = _merge(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, inputs, "future", merge)
        assert got.dtype == torch.bfloat16
        valid = inputs["attention_mask"].bool()[:, None, :, None].expand_as(got)
        torch.testing.assert_close(got.float()[valid], want[valid], atol=3e-2, rtol=3e-2)



@pytest.mark.parametrize("padded", [False, True], ids=["causal-base", "padded-base"])
def test_policy_rows_give_the_same_whole_pass_as_dense_masks(padded):
    """The model integration hands the kernel the policy's overlay (FutureRows), not dense masks: its
    whole-pass rows (FutureRows.whole) are the policy's masks row for row, so the merge is the same."""
    from futuremask.kernels.rows import FutureRows
    from futuremask.policies import overlay_mod, policy_mask

    q, k, v, layout, inputs = _batch(batch=3)
    if not padded:
        inputs = dict(is_visual=inputs["is_visual"])
        layout = TokenLayout.from_masks(**inputs)
    base = policy_mask("causal", layout)
    future = fm.build_mask("mma", **inputs) & ~base
    rows = FutureRows(overlay_mod("mma", layout), base[:, None] if padded else None, layout.length, 3)
    whole_base, whole_future = rows.whole()
    assert torch.equal(whole_future, future) and torch.equal(whole_base, base)
    merge = fm.Merge("kernel")
    args = dict(merge=merge, prefix_positions=layout.sequence_sinks(1), prompt_end=layout.segment_end)
    got = merge_attention(q, k, v, base[:, None] if padded else None, rows, **args)
    want = merge_attention(q, k, v, base, future, **args)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
