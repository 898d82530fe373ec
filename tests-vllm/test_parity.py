"""vLLM under each policy equals fm.apply on the Hugging Face model: prompt log-probs and greedy tokens.

One engine per case serves a batch that mixes prompts with and without images; each request is
compared with the Hugging Face model run on that prompt alone, so the batch also equals each alone.
"""

from __future__ import annotations

import pytest
from cases import CASES, MIXED, NEW_TOKENS, requests, served
from conftest import close, make_engine
from vllm import SamplingParams

TOL = 1e-4


def test_policies_change_the_reference(tiny):
    """Each case differs from causal exactly on the prompts with images, so the parity below can fail."""
    _, refs = tiny
    for case in CASES[1:]:
        for (text, images), got, stock in zip(MIXED, refs[case], refs[("causal", None)], strict=True):
            assert ((got[1] - stock[1]).abs().max() > 1e-3) == bool(images), (case, text)


@pytest.mark.parametrize("policy,merge", CASES, ids=[f"{p}-{m.kind if m else 'none'}" for p, m in CASES])
def test_vllm_equals_hf(tiny, policy, merge):
    path, refs = tiny
    llm = make_engine(path, policy, merge)
    try:
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, prompt_logprobs=0, logprobs=0,
                                ignore_eos=True)
        outputs = llm.generate(requests(), params, use_tqdm=False)
    finally:
        close(llm)
    for (text, _), out, (ids, prompt_lp, gen, gen_lp) in zip(MIXED, outputs, refs[(policy, merge)], strict=True):
        got_ids, got_prompt, got_gen, got_gen_lp = served(out)
        assert got_ids == ids
        assert (got_prompt - prompt_lp).abs().max().item() <= TOL, text
        assert got_gen == gen, text
        assert (got_gen_lp - gen_lp).abs().max().item() <= TOL, text
