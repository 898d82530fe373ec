"""The vLLM integration's whole-prompt attention (pure torch: runs without vLLM) against references.

`attend` gets one request's rows as vLLM holds them (``[L, H, D]``); it must equal futuremask's
reference attention (fm.attention) on the same layout, including a prompt followed by generated
tokens (vLLM's recompute after preemption) and sliding-window layers, whose past stays in the window.
"""

from __future__ import annotations

import pytest
import torch

import futuremask as fm
from futuremask.integrations.vllm.prefill import PromptPass, attend
from futuremask.layout import TokenLayout

VISUAL = torch.tensor([0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
PROMPT_LEN = 9  # then 3 generated tokens, outside the prompt region
L, H, HKV, D = len(VISUAL), 4, 2, 8
TOL = dict(rtol=1e-5, atol=1e-6)  # the eager reference takes its softmax in float32


def rows():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(L, H, D, generator=g, dtype=torch.float64),
            torch.randn(L, HKV, D, generator=g, dtype=torch.float64),
            torch.randn(L, HKV, D, generator=g, dtype=torch.float64))


def prompt_pass() -> PromptPass:
    prompt = (torch.arange(L) < PROMPT_LEN)[None]
    modality = (VISUAL & prompt[0]).long()[None]
    return PromptPass(0, L, TokenLayout(valid=torch.ones_like(prompt), modality=modality, prompt=prompt))


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
