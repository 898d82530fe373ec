"""The prompts and policies of the vLLM suite, and their Hugging Face references (fm.apply).

vLLM's Transformers backend patches transformers' model classes when an engine starts, so every
reference is computed once, before the first engine (conftest's ``tiny`` fixture).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import futuremask as fm


def draw_image(seed: int, size: int = 32) -> Image.Image:
    """A deterministic random RGB image."""
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))


NEW_TOKENS = 5
MIXED = [  # one batch: prompts with one image, none, two images
    ("USER: <image> what color is the circle ?\nASSISTANT:", [draw_image(0)]),
    ("USER: how many images are there ?\nASSISTANT:", []),
    ("USER: <image> first image , <image> second image : which is red ?\nASSISTANT:", [draw_image(1), draw_image(2)]),
]
CASES = [(name, None) for name in fm.POLICIES] + [("future_v2v", fm.Merge("lse")), ("mma", fm.Merge("kernel"))]

PREEMPT_POLICY = "future"
PREEMPT_TOKENS = 80
PREEMPT = [
    ("USER: <image> describe the picture , then list every color you see .\nASSISTANT:", [draw_image(3)]),
    ("USER: <image> <image> which image is first ?\nASSISTANT:", [draw_image(4), draw_image(5)]),
    ("USER: <image> what shape is in the middle ?\nASSISTANT:", [draw_image(6)]),
]


def reference(model, processor, text, images, policy, merge=None, new_tokens=NEW_TOKENS):
    """``(prompt ids, prompt log-probs [L-1], greedy ids, their log-probs)`` of fm.apply on one prompt alone."""
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    ids = inputs["input_ids"]
    with fm.apply(model, policy, merge=merge), torch.no_grad():
        logits = model(**inputs).logits[0].float()
        out = model.generate(  # eos_token_id=None: never stops early, as vLLM with ignore_eos=True
            **inputs, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, output_logits=True,
            return_dict_in_generate=True,
        )
    prompt_lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    gen = out.sequences[0, ids.shape[1]:]
    assert len(gen) == new_tokens, "the reference stopped early"
    gen_lp = torch.stack([torch.log_softmax(s[0].float(), -1)[t] for s, t in zip(out.logits, gen, strict=True)])
    return ids[0].tolist(), prompt_lp, gen.tolist(), gen_lp


def requests(prompts=MIXED) -> list[dict]:
    """vLLM's request dicts for ``(text, images)`` pairs."""
    return [{"prompt": t, "multi_modal_data": {"image": imgs}} if imgs else {"prompt": t} for t, imgs in prompts]


def served(out):
    """``(prompt ids, prompt log-probs [L-1], greedy ids, their log-probs)`` of one vLLM ``RequestOutput``
    (sampled with ``prompt_logprobs=0, logprobs=0``), in the order of :func:`reference`."""
    ids = list(out.prompt_token_ids)
    prompt_lp = torch.tensor([lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], ids[1:], strict=True)])
    completion = out.outputs[0]
    gen = list(completion.token_ids)
    gen_lp = torch.tensor([lp[t].logprob for lp, t in zip(completion.logprobs, gen, strict=True)])
    return ids, prompt_lp, gen, gen_lp


def all_references(model, processor) -> dict:
    """``{(policy, merge): [reference per MIXED prompt]}`` for CASES and causal, plus ``"preempt"``."""
    refs = {
        (policy, merge): [reference(model, processor, t, imgs, policy, merge) for t, imgs in MIXED]
        for policy, merge in CASES + [("causal", None)]
    }
    refs["preempt"] = [
        reference(model, processor, t, imgs, PREEMPT_POLICY, new_tokens=PREEMPT_TOKENS) for t, imgs in PREEMPT
    ]
    return refs
