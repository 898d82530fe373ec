"""build_mask against DESIGN §3, written out pair by pair on random layouts."""

from __future__ import annotations

import random

import pytest
import torch

import futuremask as fm
from futuremask.layout import TokenLayout


def definition(policy: str, i: int, j: int, mod: list[int], valid: list[bool], prompt: list[bool]) -> bool:
    """allowed(i, j) exactly as DESIGN §3 states it (plus image_bidirectional from the core issue)."""
    if not valid[j]:
        return False
    if j <= i:
        return True
    vis_i, vis_j = mod[i] != 0, mod[j] != 0
    if policy == "causal":
        return False
    if policy == "future":
        return vis_i and prompt[j]
    if policy == "future_v2v":
        return vis_i and vis_j and prompt[j]
    if policy == "future_v2t":
        return vis_i and not vis_j and prompt[j]
    if policy == "mma":
        return mod[i] != mod[j] and prompt[i] and prompt[j]
    if policy == "image_bidirectional":
        same_run = vis_i and all(mod[t] == mod[i] for t in range(i, j + 1))
        return same_run and prompt[j]
    raise AssertionError(policy)


def random_layout(rng: random.Random, length: int):
    """Interleaved text/image/video runs, left padding, and a prompt/continuation split."""
    mod = []
    while len(mod) < length:
        kind = rng.choice([0, 0, 1, 1, 2])
        mod += [kind] * rng.randint(1, 5)
    mod = mod[:length]
    pad = rng.randint(0, length // 3)
    valid = [t >= pad for t in range(length)]
    mod = [m if v else 0 for m, v in zip(mod, valid, strict=True)]
    cont = rng.randint(0, length // 4)
    prompt = [v and t < length - cont for t, v in enumerate(valid)]
    for t in range(length - cont, length):
        mod[t] = 0  # a continuation is text
    return mod, valid, prompt


@pytest.mark.parametrize("policy", fm.POLICIES)
def test_build_mask_matches_definition_on_random_layouts(policy):
    rng = random.Random(policy)
    for _ in range(12):
        batch, length = rng.randint(1, 3), rng.randint(2, 24)
        rows = [random_layout(rng, length) for _ in range(batch)]
        mod = torch.tensor([r[0] for r in rows])
        valid = torch.tensor([r[1] for r in rows])
        prompt = torch.tensor([r[2] for r in rows])
        got = fm.build_mask(policy, mod != 0, attention_mask=valid.long(), prompt_mask=prompt, modality=mod)
        assert got.shape == (batch, length, length) and got.dtype == torch.bool
        for b, (m, v, p) in enumerate(rows):
            for i in range(length):
                if not v[i]:
                    continue  # padding query rows are unspecified
                want = [definition(policy, i, j, m, v, p) for j in range(length)]
                assert got[b, i].tolist() == want, (policy, b, i, m, v, p)


def test_original_is_causal_and_aliases_resolve():
    vis = torch.tensor([0, 1, 1, 0, 1]).bool()
    assert torch.equal(fm.build_mask("original", vis), fm.build_mask("causal", vis))
    assert torch.equal(fm.build_mask("causal", vis)[0], torch.ones(5, 5, dtype=torch.bool).tril())
    assert fm.get_policy("original").name == "causal"


def test_text_rows_of_future_policies_stay_causal():
    vis = torch.tensor([0, 1, 1, 0, 1, 0, 0]).bool()
    causal = fm.build_mask("causal", vis)[0]
    for policy in ("future", "future_v2v", "future_v2t"):
        mask = fm.build_mask(policy, vis)[0]
        assert torch.equal(mask[~vis], causal[~vis])
        assert mask[vis].sum() > causal[vis].sum()


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="unknown mask policy 'futur'.*future_v2v"):
        fm.build_mask("futur", torch.zeros(3, dtype=torch.bool))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"attention_mask must be \[B, L\]"):
        fm.build_mask("future", torch.zeros(4, dtype=torch.bool), attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="modality and is_visual disagree"):
        fm.build_mask("mma", torch.tensor([0, 1]).bool(), modality=torch.tensor([[0, 0]]))


def test_layout_from_inputs_reads_config_and_labels():
    class Config:
        image_token_id = 7
        video_token_id = 8

    ids = torch.tensor([[0, 0, 5, 7, 7, 5, 8, 5, 6, 6]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100] * 8 + [6, 6]])
    lay = TokenLayout.from_inputs(Config(), input_ids=ids, attention_mask=attn, labels=labels)
    assert lay.modality.tolist() == [[0, 0, 0, 1, 1, 0, 2, 0, 0, 0]]
    assert lay.prompt.tolist() == [[False, False] + [True] * 6 + [False, False]]
    assert lay.sink_positions(2).tolist() == [[2, 3]]
    assert lay.visual_run[0, 3] == lay.visual_run[0, 4] != lay.visual_run[0, 6]
    typed = TokenLayout.from_inputs(Config(), mm_token_type_ids=torch.tensor([[0, 1, 2]]))
    assert typed.modality.tolist() == [[0, 1, 2]]


def test_layout_needs_image_token_in_config():
    class Config:
        pass

    with pytest.raises(ValueError, match="image_token_id"):
        TokenLayout.from_inputs(Config(), input_ids=torch.tensor([[1, 2]]))
