"""vLLM under each policy equals fm.apply on the Hugging Face model: prompt log-probs and greedy tokens.

One engine per policy serves a batch that mixes prompts with and without images; each request is
compared with the Hugging Face model run on that prompt alone, so the batch also equals each alone.
"""

from __future__ import annotations

import pytest
import torch
from conftest import close, draw_image, make_engine
from vllm import SamplingParams

import futuremask as fm

NEW_TOKENS = 5
TOL = 1e-4
PROMPTS = [
    ("USER: <image> what color is the circle ?\nASSISTANT:", [draw_image(0)]),
    ("USER: how many images are there ?\nASSISTANT:", []),
    ("USER: <image> first image , <image> second image : which is red ?\nASSISTANT:", [draw_image(1), draw_image(2)]),
]
CASES = [(name, None) for name in fm.POLICIES] + [("future_v2v", fm.Merge("lse")), ("mma", fm.Merge("kernel"))]


def reference(model, processor, text, images, policy, merge):
    """``(prompt ids, prompt log-probs [L-1], greedy ids, their log-probs)`` of fm.apply on one prompt."""
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    ids = inputs["input_ids"]
    with fm.apply(model, policy, merge=merge), torch.no_grad():
        logits = model(**inputs).logits[0].float()
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    prompt_lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    gen = out.sequences[0, ids.shape[1]:]
    gen_lp = torch.stack([torch.log_softmax(s[0].float(), -1)[t] for s, t in zip(out.logits, gen)])
    return ids[0].tolist(), prompt_lp, gen.tolist(), gen_lp


@pytest.fixture(scope="session")
def references(tiny):
    """The Hugging Face results of every case and prompt, computed before any engine starts."""
    model, processor, _ = tiny
    return {
        (policy, merge): [reference(model, processor, text, images, policy, merge) for text, images in PROMPTS]
        for policy, merge in CASES + [("causal", None)]
    }


def test_policies_change_the_reference(references):
    """Each case differs from causal on the prompts with images (so the parity below can fail)."""
    causal = references[("causal", None)]
    for case in CASES[1:]:
        for (text, images), got, stock in zip(PROMPTS, references[case], causal):
            assert ((got[1] - stock[1]).abs().max() > 1e-3) == bool(images), (case, text)


@pytest.mark.parametrize("policy,merge", CASES, ids=[f"{p}-{m.kind if m else 'none'}" for p, m in CASES])
def test_vllm_equals_hf(tiny, references, policy, merge):
    _, _, path = tiny
    llm = make_engine(path, policy, merge)
    try:
        requests = [{"prompt": t, "multi_modal_data": {"image": imgs}} if imgs else {"prompt": t} for t, imgs in PROMPTS]
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, prompt_logprobs=0, logprobs=0,
                                ignore_eos=True)
        outputs = llm.generate(requests, params, use_tqdm=False)
    finally:
        close(llm)
    for (text, _), out, (ids, prompt_lp, gen, gen_lp) in zip(PROMPTS, outputs, references[(policy, merge)]):
        assert out.prompt_token_ids == ids
        got_prompt = torch.tensor([lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], ids[1:])])
        assert (got_prompt - prompt_lp).abs().max().item() <= TOL, text
        completion = out.outputs[0]
        assert list(completion.token_ids) == gen, text
        got_gen = torch.tensor([lp[t].logprob for lp, t in zip(completion.logprobs, gen)])
        assert (got_gen - gen_lp).abs().max().item() <= TOL, text
