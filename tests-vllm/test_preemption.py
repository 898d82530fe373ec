"""A request preempted for lack of KV cache is recomputed (prompt and generated tokens in one pass) exactly.

vLLM recomputes a preempted request from position 0: the pass holds its prompt and the tokens it has
generated so far. Those tokens must stay outside the prompt region (no visual row sees them), as they
are in decoding; the result then equals the Hugging Face model's uninterrupted generate().
"""

from __future__ import annotations

from cases import PREEMPT, PREEMPT_POLICY, PREEMPT_TOKENS, requests
from conftest import close, make_engine
from vllm import SamplingParams

from futuremask.integrations.vllm import backend


def test_preempted_requests_are_recomputed_exactly(tiny, monkeypatch):
    path, refs = tiny
    recomputed = []
    plan = backend.plan_step

    def recording(*args, **kwargs):
        passes = plan(*args, **kwargs)
        recomputed.extend(p for p in passes if not bool(p.layout.prompt.all()))
        return passes

    monkeypatch.setattr(backend, "plan_step", recording)
    # 9 blocks of 32 tokens, one of them vLLM's null block: room for 256 tokens, not for the three requests
    # (about 110 tokens each at the end).
    llm = make_engine(path, PREEMPT_POLICY, block_size=32, kv_cache_memory_bytes=9 * 32 * 1024)
    try:
        params = SamplingParams(max_tokens=PREEMPT_TOKENS, temperature=0.0, ignore_eos=True)
        outputs = llm.generate(requests(PREEMPT), params, use_tqdm=False)
    finally:
        close(llm)
    assert recomputed, "no request was preempted: the test did not exercise a recompute"
    assert [list(o.outputs[0].token_ids) for o in outputs] == [gen for _, _, gen, _ in refs["preempt"]]
