"""Beam search under a policy is refused, offline and through the OpenAI server; the stock engine keeps it.

vLLM's beam search resubmits the prompt and each beam's tokens as a new prompt every step: the engine
cannot tell the generated tokens from the prompt, so a policy would open them to the visual rows.
"""

from __future__ import annotations

import pytest
from cases import MIXED, requests
from conftest import close, make_engine
from vllm.sampling_params import BeamSearchParams

REFUSED = "beam search is refused under futuremask policy 'future'"
PARAMS = BeamSearchParams(beam_width=3, max_tokens=3, ignore_eos=True)


def test_offline_beam_search_is_refused_under_a_policy(tiny):
    path, _ = tiny
    llm = make_engine(path, "future")
    try:
        with pytest.raises(ValueError, match=REFUSED):
            llm.beam_search(requests(MIXED[:1]), PARAMS)
        # the engine stays usable for what it serves exactly
        assert len(llm.generate(requests(MIXED[:1]), use_tqdm=False)[0].outputs[0].token_ids) > 0
    finally:
        close(llm)


def test_the_stock_engine_still_runs_beam_search(tiny):
    path, _ = tiny
    llm = make_engine(path, "causal")
    try:
        beams = llm.beam_search(requests(MIXED[:1]), PARAMS)[0].sequences
    finally:
        close(llm)
    assert len(beams) == 3 and all(b.cum_logprob < 0 for b in beams)
