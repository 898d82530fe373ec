"""The vLLM integration's whole-prompt attention (pure torch: runs without vLLM) against references.

`attend` gets one request's rows as vLLM holds them (``[L, H, D]``); it must equal futuremask's
reference attention (fm.attention) on the same layout, including a prompt followed by generated
tokens (vLLM's recompute after preemption) and sliding-window layers, whose past stays in the window.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig

import futuremask as fm
from futuremask.integrations.vllm.prefill import PromptRows, attend, plan_step, window_size
from futuremask.layout import TokenLayout

IMAGE = 7

VISUAL = torch.tensor([0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
PROMPT_LEN = 9  # then 3 generated tokens, outside the prompt region
L, H, HKV, D = len(VISUAL), 4, 2, 8
TOL = dict(rtol=1e-5, atol=1e-6)  # the eager reference takes its softmax in float32


def rows():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(L, H, D, generator=g, dtype=torch.float64),
            torch.randn(L, HKV, D, generator=g, dtype=torch.float64),
            torch.randn(L, HKV, D, generator=g, dtype=torch.float64))


def prompt_pass() -> PromptRows:
    prompt = (torch.arange(L) < PROMPT_LEN)[None]
    modality = (VISUAL & prompt[0]).long()[None]
    return PromptRows(0, L, TokenLayout(valid=torch.ones_like(prompt), modality=modality, prompt=prompt))


def as_bhld(t):
    return t.transpose(0, 1)[None]


@pytest.mark.parametrize("merge", [None, fm.Merge("lse"), fm.Merge("kernel", kernel=2, prefix=2)])
@pytest.mark.parametrize("policy", fm.POLICIES)
def test_attend_equals_the_reference(policy, merge):
    q, k, v = rows()
    got = attend(prompt_pass(), fm.get_policy(policy), merge, q, k, v, scale=D**-0.5, window=-1)
    prompt_mask = (torch.arange(L) < PROMPT_LEN)[None]
    want = fm.attention(as_bhld(q), as_bhld(k), as_bhld(v), policy=policy, is_visual=VISUAL & prompt_mask[0],
                        prompt_mask=prompt_mask, merge=merge)
    torch.testing.assert_close(as_bhld(got), want, **TOL)


@pytest.mark.parametrize("policy", ["future", "mma"])
def test_sliding_window_keeps_past_keys_in_the_window(policy):
    """allowed(i, j) = (0 <= i - j < W) or (the policy's pair and j > i), written out and softmaxed by hand."""
    window = 3
    q, k, v = rows()
    got = attend(prompt_pass(), fm.get_policy(policy), None, q, k, v, scale=D**-0.5, window=window)
    prompt_mask = (torch.arange(L) < PROMPT_LEN)[None]
    full = fm.build_mask(policy, VISUAL & prompt_mask[0], prompt_mask=prompt_mask)[0]
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = ((i - j >= 0) & (i - j < window)) | (full & (j > i))
    assert not torch.equal(allowed, full)  # the window matters on this layout
    kk, vv = k.repeat_interleave(H // HKV, dim=1), v.repeat_interleave(H // HKV, dim=1)
    scores = torch.einsum("ihd,jhd->hij", q, kk) * D**-0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    want = torch.einsum("hij,jhd->ihd", weights, vv)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("stock,want", [(-1, 0), (None, 0), (3, 3), ((-1, -1), 0), ((2, 0), 3)])
def test_window_size_reads_the_cpu_and_the_flash_attention_window(stock, want):
    """vLLM's CPU impl keeps the window length (-1: none), FlashAttention ``(window - 1, 0)`` ((-1, -1): none)."""
    assert window_size(stock) == want


def test_a_flash_attention_window_gives_the_rows_of_the_same_cpu_window():
    q, k, v = rows()
    policy = fm.get_policy("future")
    cpu = attend(prompt_pass(), policy, None, q, k, v, scale=D**-0.5, window=window_size(3))
    flash = attend(prompt_pass(), policy, None, q, k, v, scale=D**-0.5, window=window_size((2, 0)))
    unwindowed = attend(prompt_pass(), policy, None, q, k, v, scale=D**-0.5, window=window_size((-1, -1)))
    torch.testing.assert_close(flash, cpu, rtol=0, atol=0)
    assert not torch.allclose(flash, unwindowed)  # the window matters here


def test_a_window_that_reaches_ahead_is_refused():
    with pytest.raises(ValueError, match="reaches 2 keys ahead"):
        window_size((2, 2))


@pytest.mark.parametrize("policy", ["future", "future_v2t", "mma"])
def test_a_pass_planned_for_another_device_keeps_every_tensor_there(policy):
    """On CUDA the queries are on the GPU: the layout and masks must be too (``meta`` stands in for it here:
    any tensor of the pass left on the CPU fails the arithmetic). The merge path reads values (``.item()``),
    which ``meta`` cannot; it is listed as unverified in docs/serving.md."""
    prompt = [1, 2, IMAGE, IMAGE, IMAGE, 3, 4, 5]
    ids = torch.tensor([prompt + [1] * 8])
    passes = plan_step(fm.get_policy(policy), LlavaConfig(image_token_id=IMAGE), ids, torch.tensor([len(prompt)]),
                       torch.tensor([0, len(prompt)]), torch.tensor([len(prompt)]), device="meta")
    assert [p.layout.valid.device.type for p in passes] == ["meta"]
    q, kv = torch.empty(len(prompt), H, D, device="meta"), torch.empty(len(prompt), HKV, D, device="meta")
    out = attend(passes[0], fm.get_policy(policy), None, q, kv, kv, scale=D**-0.5, window=3)
    assert out.device.type == "meta" and out.shape == (len(prompt), H, D)
