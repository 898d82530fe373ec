"""The mechanisms behind the benchmark's figures, at the kernel level (no timings).

* blocked SDPA gives SDPA's result under every policy mask, with padding and grouped heads;
* its plan scores the attended pairs plus at most part of a diagonal square, never L^2 for a
  causal-like mask, and bounds the float mask it hands to SDPA by the block size;
* the merge kernel scores a run of rows against its future keys alone, in blocks bounded by ``chunk_bytes``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import futuremask.kernels.merge as merge_kernel
from futuremask import Merge, build_mask
from futuremask.kernels import blocked, sdpa
from futuremask.kernels.blocked import blocked_sdpa, plan
from futuremask.kernels.rows import FutureRows
from futuremask.layout import TokenLayout
from futuremask.policies import POLICIES, overlay_mod, policy_mask


@pytest.fixture(autouse=True)
def _run_path(monkeypatch):
    """The merge tests here are about the run path: keep these small passes off the dense one."""
    monkeypatch.setattr("futuremask.kernels.merge_dense.DENSE_BYTES", 0)


def _layout(length: int, spans: list[tuple[int, int]]) -> torch.Tensor:
    vis = torch.zeros(length, dtype=torch.bool)
    for s, e in spans:
        vis[s:e] = True
    return vis


def _scored_pairs(blocks) -> int:
    """Pairs SDPA computes under a plan: full and masked pieces are rectangles, causal ones triangles."""
    total = 0
    for blk in blocks:
        n = blk.stop - blk.start
        for p in blk.pieces:
            total += n * (n + 1) // 2 if p.kind == "causal" else n * (p.stop - p.start)
    return total


@pytest.mark.parametrize("policy", POLICIES)
def test_blocked_sdpa_equals_sdpa_under_every_policy(policy):
    torch.manual_seed(0)
    length = 300
    vis = _layout(length, [(20, 120), (150, 230)])
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, :17] = 0  # left padding in the second row
    mask = build_mask(policy, vis, attention_mask=attention_mask)[:, None]
    q, k, v = (torch.randn(2, 4, length, 8) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for block in (16, 64, 1024):
        out = blocked_sdpa(q, k, v, mask, block=block)
        torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)


def test_fully_masked_rows_come_out_as_zeros():
    torch.manual_seed(1)
    mask = build_mask("future", _layout(40, [(5, 20)]))[:, None].clone()
    mask[0, 0, 10:14] = False  # rows with no key at all
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    out = blocked_sdpa(q, k, v, mask, block=8)
    assert torch.all(out[0, :, 10:14] == 0)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=2e-6, rtol=1e-5
    )


def test_causal_mask_is_one_causal_call():
    mask = build_mask("causal", torch.zeros(500, dtype=torch.bool))[:, None]
    blocks = plan(mask, block=64)
    assert [(b.start, b.stop) for b in blocks] == [(0, 500)]
    assert [(p.start, p.stop, p.kind) for p in blocks[0].pieces] == [(0, 500, "causal")]


def test_plan_of_future_mask_scores_only_attended_pairs():
    # text 0-99, image 100-299, text 300-399: text rows are causal, image rows see the whole prompt
    vis = _layout(400, [(100, 300)])
    mask = build_mask("future", vis)[:, None]
    blocks = plan(mask, block=1024)
    shapes = [(b.start, b.stop, [(p.start, p.stop, p.kind) for p in b.pieces]) for b in blocks]
    assert shapes == [
        (0, 100, [(0, 100, "causal")]),
        (100, 300, [(0, 400, "full")]),
        (300, 400, [(0, 300, "full"), (300, 400, "causal")]),
    ]
    assert _scored_pairs(blocks) == int(mask.sum())


@pytest.mark.parametrize("policy", ["future_v2v", "future_v2t", "mma", "image_bidirectional"])
def test_plan_work_is_attended_pairs_without_masked_pieces(policy):
    vis = _layout(600, [(50, 250), (300, 500)])
    mask = build_mask(policy, vis)[:, None]
    blocks = plan(mask, block=1024)
    assert all(p.kind != "masked" for b in blocks for p in b.pieces)
    assert _scored_pairs(blocks) == int(mask.sum())


def test_masked_pieces_are_cut_to_the_block_size():
    vis = _layout(300, [(20, 200)])
    attention_mask = torch.ones(2, 300, dtype=torch.long)
    attention_mask[0, :9] = 0  # rows of the batch differ: the padding columns need a mask
    mask = build_mask("future", vis, attention_mask=attention_mask)[:, None]
    blocks = plan(mask, block=32)
    masked = [(b, p) for b in blocks for p in b.pieces if p.kind == "masked"]
    assert masked
    for b, p in masked:
        assert b.stop - b.start <= 32
        assert p.mask.shape == (2, 1, b.stop - b.start, p.stop - p.start)


def test_plan_is_built_once_per_mask(monkeypatch):
    calls = []
    real = blocked.plan
    monkeypatch.setattr(blocked, "plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    mask = build_mask("future_v2v", _layout(200, [(10, 90)]))[:, None]
    q, k, v = (torch.randn(1, 2, 200, 8) for _ in range(3))
    first = blocked_sdpa(q, k, v, mask)
    for _ in range(3):  # every layer of a forward passes the same mask tensor
        torch.testing.assert_close(blocked_sdpa(q, k, v, mask), first)
    assert len(calls) == 1
    blocked_sdpa(q, k, v, mask.clone())  # a new forward: a new mask, a new plan
    assert len(calls) == 2


def test_sdpa_attention_routes_long_prompts_through_blocked(monkeypatch):
    seen = []
    monkeypatch.setattr(
        sdpa, "blocked_sdpa", lambda *a, **k: seen.append(a[3].shape) or blocked_sdpa(*a, **k)
    )
    monkeypatch.setattr(sdpa, "MIN_BLOCKED_ROWS", 64)
    mask = build_mask("mma", _layout(100, [(30, 60)]))[:, None]
    q = torch.randn(1, 4, 100, 8)
    k, v = torch.randn(1, 2, 100, 8), torch.randn(1, 2, 100, 8)  # grouped heads
    out = sdpa.sdpa_attention(q, k, v, mask)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask), atol=2e-6, rtol=1e-5
    )
    assert seen == [mask.shape]
    short = build_mask("mma", _layout(50, [(10, 20)]))[:, None]
    sdpa.sdpa_attention(q[:, :, :50], k[:, :, :50], v[:, :, :50], short)  # below the threshold: plain SDPA
    assert len(seen) == 1


class _Products(TorchDispatchMode):
    """Records the shapes of every matrix product and every flash-attention call (queries, keys)."""

    def __init__(self):
        super().__init__()
        self.products, self.flash = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.mm):  # with or without out=
            self.products.append(tuple(out.shape))
        elif func == torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default:
            self.flash.append((args[0].shape[-2], args[1].shape[-2], args[4] if len(args) > 4 else False))
        return out


@pytest.mark.parametrize("length", [64, 256])
@pytest.mark.parametrize("kind", ["kernel", "lse"])
def test_merge_kernel_scores_only_future_keys_a_block_at_a_time(length, kind):
    """An image's rows are scored against their future keys alone (not all L): ``lse`` by two flash calls
    (the keys after the image, and the image's own later keys as a reversed causal square), ``kernel`` in
    blocks bounded by ``chunk_bytes`` that skip the keys before each block's rows."""
    from futuremask.kernels import merge_runs

    heads, dim = 4, 8
    torch.manual_seed(2)
    start, stop = length // 8, length // 2
    vis = _layout(length, [(start, stop)])
    layout = TokenLayout.from_masks(vis)
    base = policy_mask("causal", layout)
    future = policy_mask("future", layout) & ~base
    q, k, v = (torch.randn(1, heads, length, dim) for _ in range(3))
    args = dict(merge=Merge(kind=kind), prefix_positions=layout.sink_positions(1))
    chunk_bytes = 4 * heads * (merge_runs.BLOCK_COLUMNS + 2) * 5  # blocks of 5 rows
    watch = _Products()
    with watch, torch.no_grad():
        out = merge_kernel.merge_attention(q, k, v, base, future, chunk_bytes=chunk_bytes, **args)
    rows = stop - start
    if kind == "lse":  # the causal pass over all L, then the image's rows: keys after it, keys inside it
        assert watch.flash == [(length, length, True), (rows, length - stop, False), (rows - 1, rows - 1, True)]
    else:
        blocks = [s for s in watch.products if s[0] == heads and s[-1] <= 5]  # [H, columns, rows of the block]
        assert sum(s[-1] for s in blocks if s[1] > 1) >= rows and max(s[1] for s in blocks) <= 130
        future_pairs = rows * (length - stop) + rows * (rows - 1) // 2
        scored = sum(s[1] * s[2] for s in blocks)
        assert future_pairs <= scored < rows * (length - start - 1)  # the triangle is skipped, block by block
    exact = merge_kernel.merge_attention(q.clone().requires_grad_(), k, v, base, future, **args).detach()
    torch.testing.assert_close(out, exact)


@pytest.mark.parametrize("policy", ["future", "future_v2v", "future_v2t", "mma"])
def test_merge_fast_path_equals_exact_rows(policy):
    """Inference (sink correction) and autograd (explicit softmax over each row) paths agree."""
    import itertools

    torch.manual_seed(3)
    length = 70
    vis = _layout(length, [(8, 30), (40, 62)]).expand(2, -1)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, :5] = 0
    prompt = attention_mask.bool().clone()
    prompt[:, 66:] = False  # a continuation the windows must not reach
    layout = TokenLayout.from_masks(vis, attention_mask=attention_mask, prompt_mask=prompt)
    base = policy_mask("causal", layout)
    future = policy_mask(policy, layout) & ~base
    # float64, so that the two paths' different summation orders stay far below the tolerance
    q, k = (
        torch.randn(2, 4, length, 8, dtype=torch.float64),
        torch.randn(2, 2, length, 8, dtype=torch.float64),
    )
    v = torch.randn(2, 2, length, 8, dtype=torch.float64)
    end = torch.full((2,), 66)
    for kind, pool, kernel, prefix in itertools.product(["kernel", "lse"], ["max", "mean"], [1, 3], [1, 2]):
        if kind == "lse" and (pool, kernel) != ("max", 3):
            continue
        merge = Merge(kind=kind, pool=pool, kernel=kernel, prefix=prefix)
        args = dict(merge=merge, prefix_positions=layout.sink_positions(prefix), prompt_end=end)
        fast = merge_kernel.merge_attention(q, k, v, base, future, chunk_bytes=4 * 6 * 4 * length * 7, **args)
        exact = merge_kernel.merge_attention(q.clone().requires_grad_(), k, v, base, future, **args).detach()
        torch.testing.assert_close(fast, exact, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("policy", ["future", "mma"])
@pytest.mark.parametrize("kind", ["kernel", "lse"])
def test_merge_fast_path_takes_bfloat16_inputs(policy, kind):
    """bf16 q/k/v (a bf16 model): the runs are scored in float32, as the exact path scores them."""
    torch.manual_seed(4)
    length = 96
    vis = _layout(length, [(6, 40), (50, 80)])
    layout = TokenLayout.from_masks(vis)
    base = policy_mask("causal", layout)
    future = policy_mask(policy, layout) & ~base
    q, k, v = (torch.randn(1, 4, length, 16).bfloat16() for _ in range(3))
    args = dict(merge=Merge(kind=kind), prefix_positions=layout.sink_positions(1))
    with torch.no_grad():
        fast = merge_kernel.merge_attention(q, k, v, base, future, **args)
    exact = merge_kernel.merge_attention(q.clone().requires_grad_(), k, v, base, future, **args).detach()
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), exact.float(), atol=2e-2, rtol=2e-2)


def test_merge_fast_path_recomputes_rows_whose_sink_loses_its_mass(monkeypatch):
    """A sink holding nearly all of a row's weight and losing it is recomputed exactly, not by subtraction."""
    from futuremask.kernels import merge_fast

    recomputed = []
    real = merge_kernel.merged_logits
    monkeypatch.setattr(
        merge_kernel,
        "merged_logits",
        lambda s, b, f, r, *a: recomputed.append(r.clone()) or real(s, b, f, r, *a),
    )
    length, dim = 12, 4
    vis = _layout(length, [(2, 8)])
    layout = TokenLayout.from_masks(vis)
    base = policy_mask("causal", layout)
    future = policy_mask("future", layout) & ~base
    q = torch.zeros(1, 1, length, dim)
    k = torch.zeros(1, 1, length, dim)
    q[..., 0] = 1.0
    k[0, 0, 0, 0] = 40.0  # the sink's score dominates every row ...
    k[0, 0, 9:, 0] = -400.0  # ... and the future text scores pull the pooled bonus far below zero
    v = torch.randn(1, 1, length, dim)
    sinks = layout.sink_positions(1)
    out = merge_kernel.merge_attention(
        q, k, v, base, future, merge=Merge(), prefix_positions=sinks, scale=1.0
    )
    assert recomputed and set(torch.cat(recomputed).tolist()) <= set(range(2, 8))
    exact = merge_kernel.merge_attention(
        q.requires_grad_(), k, v, base, future, merge=Merge(), prefix_positions=sinks, scale=1.0
    ).detach()
    torch.testing.assert_close(out, exact)
    assert merge_fast.MIN_DENOMINATOR > 0


def test_dense_mask_in_row_blocks_equals_one_broadcast(monkeypatch):
    import futuremask.policies as policies

    vis = _layout(90, [(10, 40), (50, 80)]).expand(2, -1)
    attention_mask = torch.ones(2, 90, dtype=torch.long)
    attention_mask[0, :6] = 0
    layout = TokenLayout.from_masks(vis, attention_mask=attention_mask)
    whole = {p: policy_mask(p, layout).clone() for p in POLICIES}
    monkeypatch.setattr(policies, "DENSE_CHUNK", 2 * 90 * 7)  # blocks of 7 rows
    for p in POLICIES:
        blocked_mask = policy_mask(p, layout)
        assert blocked_mask.is_contiguous() and torch.equal(blocked_mask, whole[p])


@pytest.mark.parametrize("policy", ["future", "mma"])
def test_blocked_sdpa_and_merge_run_under_inference_mode(policy):
    """vLLM runs its forwards under torch.inference_mode, whose tensors have no version counter: the plan
    memo must not need one, and the result is the same as outside it."""
    from futuremask.kernels import merge_attention

    torch.manual_seed(2)
    length = 80
    vis = _layout(length, [(5, 30), (40, 60)])
    mask = build_mask(policy, vis)[:, None]
    causal = build_mask("causal", vis)[:, None]
    q, k, v = (torch.randn(1, 2, length, 8) for _ in range(3))
    merge = Merge("kernel")
    sinks = torch.zeros(1, 1, dtype=torch.long)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    merged = merge_attention(q, k, v, causal, mask & ~causal, merge=merge, prefix_positions=sinks)
    with torch.inference_mode():
        qi, ki, vi, mi, ci = (t.clone() for t in (q, k, v, mask, causal))
        out = blocked_sdpa(qi, ki, vi, mi, block=16)
        merged_inf = merge_attention(qi, ki, vi, ci, mi & ~ci, merge=merge, prefix_positions=sinks)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(merged_inf, merged, atol=2e-6, rtol=1e-5)


def _two_prompts_left_padded(length: int = 320):
    """A left-padded batch of two prompts whose images sit at other positions (row 1: 60 padding tokens)."""
    vis = torch.zeros(2, length, dtype=torch.bool)
    vis[0, 20:120] = vis[0, 150:230] = True
    vis[1, 90:170] = vis[1, 200:250] = True
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, :60] = 0
    return TokenLayout.from_masks(vis, attention_mask=attention_mask)


@pytest.mark.parametrize("policy", ["causal", "future", "mma", "future_v2t"])
def test_padded_batch_of_other_prompts_is_planned_row_by_row(policy):
    """Each batch row keeps its own structure: the batch costs what its rows cost alone (a plan of the
    whole batch only sees the pieces both rows share and scores far more), with the same result."""
    torch.manual_seed(3)
    layout = _two_prompts_left_padded()
    mask = policy_mask(policy, layout)[:, None]
    groups = blocked.batch_plan(mask)
    assert sorted(b for g in groups for b in g.rows) == [0, 1]
    batched = sum(len(g.rows) * _scored_pairs(g.blocks) for g in groups)
    alone = sum(_scored_pairs(plan(mask[b : b + 1])) for b in range(2))
    assert batched == alone < 0.8 * 2 * _scored_pairs(plan(mask))
    q, k, v = (torch.randn(2, 2, layout.length, 8) for _ in range(3))
    rows = FutureRows(overlay_mod(policy, layout), policy_mask("causal", layout)[:, None], layout.length, 2)
    for m in (mask, rows if overlay_mod(policy, layout) is not None else mask):
        out = blocked_sdpa(q, k, v, m)
        for b in range(2):  # each row alone, under its own mask, unpadded
            keep = layout.valid[b]
            qb, kb, vb = (t[b : b + 1, :, keep] for t in (q, k, v))
            want = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask[b : b + 1][:, :, keep][..., keep])
            torch.testing.assert_close(out[b : b + 1, :, keep], want, atol=2e-6, rtol=1e-5)
        assert out[1, :, ~layout.valid[1]].abs().max() == 0  # padding rows attend nothing: zeros


def test_copies_of_one_prompt_share_one_plan():
    mask = build_mask("future", _layout(200, [(10, 90)]), attention_mask=torch.ones(3, 200, dtype=torch.long))[:, None]
    (group,) = blocked.batch_plan(mask)
    assert group.rows == (0, 1, 2) and _scored_pairs(group.blocks) == _scored_pairs(plan(mask[:1]))
