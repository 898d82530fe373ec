"""fm.attention (plain and merged) against independent, loop-by-loop computations of DESIGN §3-§4."""

from __future__ import annotations

import math

import pytest
import torch

import futuremask as fm
import futuremask.kernels.merge as merge_kernel
import futuremask.kernels.merge_dense as merge_dense
from futuremask.kernels import merge_attention
from futuremask.layout import TokenLayout

torch.manual_seed(0)


def make_qkv(batch=2, heads=4, kv_heads=2, length=9, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, length, dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, length, dim, generator=g, dtype=torch.float64)
    return q, k, v


def row_softmax(logits: list[float]) -> list[float]:
    finite = [x for x in logits if x != -math.inf]
    if not finite:  # a padding query: no key at all
        return [0.0] * len(logits)
    top = max(finite)
    ex = [math.exp(x - top) if x != -math.inf else 0.0 for x in logits]
    total = sum(ex)
    return [e / total for e in ex]


def reference_out(q, k, v, weights_fn):
    """out[b, h, i] = sum_j w_ij v_j with w from weights_fn(b, h, i, scores_row)."""
    batch, heads, length, dim = q.shape
    group = heads // k.shape[1]
    out = torch.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                s = [float(q[b, h, i] @ k[b, h // group, j]) / math.sqrt(dim) for j in range(length)]
                w = weights_fn(b, i, s)
                out[b, h, i] = sum(w[j] * v[b, h // group, j] for j in range(length))
    return out


def test_plain_attention_matches_masked_softmax_with_gqa():
    q, k, v = make_qkv()
    vis = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 1, 0, 0]]).bool()
    attn = torch.tensor([[1] * 9, [0, 0] + [1] * 7])
    for policy in ("causal", "future", "mma"):
        mask = fm.build_mask(policy, vis, attention_mask=attn)
        got = fm.attention(q, k, v, policy=policy, is_visual=vis, attention_mask=attn)

        def weights(b, i, s, mask=mask):
            return row_softmax([s[j] if mask[b, i, j] else -math.inf for j in range(len(s))])

        want = reference_out(q, k, v, weights)
        valid_rows = attn.bool()[:, None, :, None].expand_as(got)
        torch.testing.assert_close(got[valid_rows], want[valid_rows])


def merged_weights(policy_mask, valid, i, s, kind, k_size, pool, prefix, prompt_len=None, sequence=None):
    """One row of DESIGN §4 written out literally (independent of futuremask.merge).

    ``prompt_len``: the future windows stop there, the end of row ``i``'s segment (default: the whole
    row). ``sequence``: packed-sequence id per position (default: one sequence); the causal keys and
    the sinks are those of ``i``'s sequence.
    """
    length = len(s)
    seq = [0] * length if sequence is None else sequence
    mine = [j for j in range(length) if valid[j] and seq[j] == seq[i]]
    sinks = mine[:prefix]
    future = [j for j in range(i + 1, length) if policy_mask[i][j]]
    logits = [s[j] if (j <= i and j in mine) else -math.inf for j in range(length)]
    if future and kind == "kernel":
        n = (length if prompt_len is None else prompt_len) - 1 - i
        f = [s[i + 1 + t] if (i + 1 + t) in future else 0.0 for t in range(n)]
        windows = [f[w : w + k_size] for w in range(n - k_size + 1)] if n >= k_size else [f]
        pooled = [max(w) if pool == "max" else sum(w) / len(w) for w in windows]
        groups = split_evenly(pooled, len(sinks))
        for g, sink in enumerate(sinks):
            if sink <= i:
                logits[sink] += sum(groups[g])
    elif future and kind == "lse":
        groups = split_evenly([s[j] for j in future], len(sinks))
        for g, sink in enumerate(sinks):
            if sink <= i and groups[g]:
                logits[sink] = math.log(math.exp(logits[sink]) + sum(math.exp(x) for x in groups[g]))
    return row_softmax(logits)


def split_evenly(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for g in range(parts):
        end = start + size + (1 if g < extra else 0)
        out.append(items[start:end])
        start = end
    return out


CASES = [
    ("future", "kernel", 3, "max", 1),
    ("future", "kernel", 3, "mean", 1),
    ("future_v2v", "kernel", 1, "max", 1),
    ("future_v2t", "kernel", 5, "mean", 2),
    ("future", "kernel", 20, "max", 2),  # every row shorter than the window
    ("future", "kernel", 20, "mean", 1),
    ("future_v2v", "kernel", 4, "max", 1),
    ("mma", "kernel", 2, "max", 1),
    ("future", "lse", 3, "max", 1),
    ("future_v2v", "lse", 3, "max", 2),
]


@pytest.mark.parametrize("policy,kind,k_size,pool,prefix", CASES)
def test_merge_matches_independent_definition(policy, kind, k_size, pool, prefix):
    q, k, v = make_qkv(length=10, seed=k_size)
    vis = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0, 1, 1, 0]]).bool()
    attn = torch.tensor([[1] * 10, [0, 0, 0] + [1] * 7])
    vis = vis & attn.bool()
    merge = fm.Merge(kind=kind, kernel=k_size, pool=pool, prefix=prefix)
    got = fm.attention(q, k, v, policy=policy, is_visual=vis, attention_mask=attn, merge=merge)
    mask = fm.build_mask(policy, vis, attention_mask=attn)

    def weights(b, i, s):
        return merged_weights(mask[b].tolist(), attn[b].bool().tolist(), i, s, kind, k_size, pool, prefix)

    want = reference_out(q, k, v, weights)
    valid_rows = attn.bool()[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[valid_rows], want[valid_rows])


@pytest.mark.parametrize("kind", ["kernel", "lse"])
def test_merge_future_stops_at_the_prompt_end(kind):
    """A continuation after the prompt adds no windows: rows merge as in the prefill of the prompt alone."""
    q, k, v = make_qkv(batch=1, length=10, seed=5)
    vis = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0, 0, 0]]).bool()
    prompt = torch.tensor([[True] * 7 + [False] * 3])
    merge = fm.Merge(kind=kind, kernel=3, pool="max")
    got = fm.attention(q, k, v, policy="future", is_visual=vis, prompt_mask=prompt, merge=merge)
    mask = fm.build_mask("future", vis, prompt_mask=prompt)

    def weights(b, i, s):
        return merged_weights(mask[b].tolist(), [True] * 10, i, s, kind, 3, "max", 1, prompt_len=7)

    torch.testing.assert_close(got, reference_out(q, k, v, weights))
    alone = fm.attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], policy="future", is_visual=vis[:, :7], merge=merge)
    torch.testing.assert_close(got[:, :, :7], alone)


def test_merge_leaves_text_only_and_causal_unchanged():
    q, k, v = make_qkv(length=7)
    no_vis = torch.zeros(2, 7, dtype=torch.bool)
    plain = fm.attention(q, k, v, policy="causal", is_visual=no_vis)
    for policy in fm.POLICIES:
        torch.testing.assert_close(fm.attention(q, k, v, policy=policy, is_visual=no_vis, merge="kernel"), plain)
    vis = torch.tensor([0, 1, 1, 0, 0, 1, 0]).bool()
    torch.testing.assert_close(
        fm.attention(q, k, v, policy="causal", is_visual=vis, merge=fm.Merge("lse")),
        fm.attention(q, k, v, policy="causal", is_visual=vis),
    )


def test_lse_keeps_past_weights_of_full_policy():
    """With lse, every attended key but the sink has the weight it has under the full future mask."""
    q, k, v = make_qkv(batch=1, heads=2, kv_heads=2, length=8, seed=3)
    vis = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 0]]).bool()
    lay = TokenLayout.from_masks(vis)
    full = fm.build_mask("future", vis)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    full_w = torch.softmax(scores.masked_fill(~full[:, None], -math.inf), dim=-1)
    # weights of the merged pass: attention over one-hot values reads them off exactly
    eye = torch.eye(8, dtype=q.dtype).expand(1, 2, 8, 8)
    merged_w = fm.attention(q, k, eye, policy="future", is_visual=vis, merge=fm.Merge("lse"))
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    past = causal.clone()
    past[:, lay.first_valid[0]] = False
    torch.testing.assert_close(merged_w[..., past], full_w[..., past])
    assert torch.all(merged_w[..., ~causal] == 0)
    # the sink carries its own weight plus all of the future's mass
    future_mass = (full_w * (~causal)).sum(-1)
    torch.testing.assert_close(merged_w[..., 0], full_w[..., 0] + future_mass)


def test_merge_chunking_does_not_change_the_result():
    q, k, v = make_qkv(batch=1, length=12)
    vis = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0]]).bool()
    lay = TokenLayout.from_masks(vis)
    base = fm.build_mask("causal", vis)
    future = fm.build_mask("future", vis) & ~base
    args = dict(merge=fm.Merge("kernel"), prefix_positions=lay.sink_positions(1))
    one_row = merge_attention(q, k, v, base, future, chunk_bytes=1, **args)
    big = merge_attention(q, k, v, base, future, **args)
    torch.testing.assert_close(one_row, big)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kind="pool"), "unknown merge kind"),
        (dict(kernel=0), "kernel must be an integer >= 1"),
        (dict(prefix=0), "prefix must be an integer >= 1"),
        (dict(pool="sum"), "unknown merge pool"),
        (dict(kernel=2.5), "kernel must be an integer"),
    ],
)
def test_merge_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fm.Merge(**kwargs)


def test_attention_keeps_dtype_and_shape():
    q, k, v = (t.to(torch.bfloat16) for t in make_qkv())
    out = fm.attention(q, k, v, policy="future_v2v", is_visual=torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 0]).bool())
    assert out.shape == q.shape and out.dtype == torch.bfloat16


MERGES = [
    fm.Merge("kernel"), fm.Merge("kernel", kernel=2, pool="mean", prefix=2), fm.Merge("lse"), fm.Merge("lse", prefix=2),
]


@pytest.mark.parametrize("merge", MERGES, ids=lambda m: f"{m.kind}-{m.pool}-k{m.kernel}-p{m.prefix}")
@pytest.mark.parametrize("grad", [False, True], ids=["sink-correction", "autograd"])
@pytest.mark.parametrize("chunk_bytes", [1, None], ids=["row-chunks", "whole-pass"])
def test_merge_kernel_matches_the_reference(merge, grad, chunk_bytes, monkeypatch):
    """The kernel (its run, general and whole-pass paths) equals fm.attention's row-by-row merge, with
    padding, a supervised continuation and two packed sequences in one row."""
    calls = []
    chosen = merge_dense.merged_rows
    monkeypatch.setattr(merge_kernel, "merged_rows", lambda *a, **kw: calls.append(1) or chosen(*a, **kw))
    q, k, v = make_qkv(batch=2, length=16, seed=5)
    vis = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0],
                        [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]]).bool()
    attn = torch.tensor([[1] * 16, [0, 0] + [1] * 14])
    prompt = attn.bool().clone()
    prompt[0, 14:] = False  # a continuation the windows stop before
    positions = torch.tensor([list(range(9)) + list(range(7)), list(range(16))])  # row 0: two sequences
    want = fm.attention(q, k, v, policy="future", is_visual=vis, attention_mask=attn, prompt_mask=prompt,
                        position_ids=positions, merge=merge)
    layout = TokenLayout.from_masks(vis, attention_mask=attn, prompt_mask=prompt, position_ids=positions)
    base = fm.build_mask("causal", vis, attention_mask=attn, prompt_mask=prompt, position_ids=positions)
    future = fm.build_mask("future", vis, attention_mask=attn, prompt_mask=prompt, position_ids=positions) & ~base
    got = merge_attention(q.clone().requires_grad_(grad), k, v, base, future, merge=merge,
                          prefix_positions=layout.sequence_sinks(merge.prefix), prompt_end=layout.segment_end,
                          chunk_bytes=chunk_bytes).detach()
    valid = attn.bool()[:, None, :, None].expand_as(got)
    assert future.any()  # the case has merged rows
    assert bool(calls) == (chunk_bytes is None and not grad)  # the small pass, in inference, is computed whole
    torch.testing.assert_close(got[valid], want[valid], atol=1e-10, rtol=1e-9)
