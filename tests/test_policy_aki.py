"""``aki`` (AKI's released mask) is ``future_v2t``; how it differs from ``mma`` (the AKI paper's general rule)."""

from __future__ import annotations

import random

import torch
from test_policies import random_layout

import futuremask as fm


def _masks(rows, *policies):
    mod = torch.tensor([r[0] for r in rows])
    valid = torch.tensor([r[1] for r in rows])
    prompt = torch.tensor([r[2] for r in rows])
    return [fm.build_mask(p, mod != 0, attention_mask=valid.long(), prompt_mask=prompt, modality=mod)
            for p in policies]


def test_aki_is_future_v2t_everywhere():
    assert fm.get_policy("aki").name == "future_v2t" and "aki" not in fm.POLICIES
    rng = random.Random(7)
    for _ in range(20):
        rows = [random_layout(rng, rng.randint(2, 24)) for _ in range(1)]
        aki, v2t = _masks(rows, "aki", "future_v2t")
        assert torch.equal(aki, v2t)


def _differences(rows, with_video: bool):
    """(mma & ~aki, aki & ~mma) on the valid query rows, and the pairs the definitions say differ."""
    mma, aki = _masks(rows, "mma", "aki")
    out = []
    for b, (mod, valid, prompt) in enumerate(rows):
        n = len(mod)
        only_mma, only_aki, want = set(), set(), set()
        for i in range(n):
            if not valid[i]:
                continue  # padding query rows are unspecified
            for j in range(n):
                if mma[b, i, j] and not aki[b, i, j]:
                    only_mma.add((i, j))
                if aki[b, i, j] and not mma[b, i, j]:
                    only_aki.add((i, j))
                later_prompt_pair = j > i and valid[j] and prompt[i] and prompt[j]
                text_to_image = mod[i] == 0 and mod[j] != 0  # text before an image -> that image
                image_to_video = with_video and mod[i] != 0 and mod[j] != 0 and mod[i] != mod[j]
                if later_prompt_pair and (text_to_image or image_to_video):
                    want.add((i, j))
        out.append((only_mma, only_aki, want))
    return out


def test_mma_and_aki_differ_exactly_on_text_before_an_image_to_that_image():
    """Text and images, left padding, a supervised (text) continuation at the end: mma adds exactly the
    pairs (text query i, image key j > i), both in the prompt; aki adds nothing mma lacks."""
    rng = random.Random(11)
    seen = 0
    for _ in range(30):
        mod, valid, prompt = random_layout(rng, rng.randint(4, 24))
        mod = [1 if m == 2 else m for m in mod]  # images only
        for only_mma, only_aki, want in _differences([(mod, valid, prompt)], with_video=False):
            assert only_aki == set()
            assert only_mma == want
            seen += len(want)
    assert seen > 50  # the layouts really contain such pairs


def test_with_video_mma_also_lets_images_and_videos_see_each_other():
    """A second visual modality: mma's extra pairs are text -> later visual token, and image <-> later video
    token (different modalities), all in the prompt; aki lets visual rows see later text only."""
    rng = random.Random(12)
    cross = 0
    for _ in range(30):
        mod, valid, prompt = random_layout(rng, rng.randint(4, 24))
        for only_mma, only_aki, want in _differences([(mod, valid, prompt)], with_video=True):
            assert only_aki == set() and only_mma == want
            cross += sum(mod[i] != 0 for i, _ in want)
    assert cross > 10


def test_every_command_accepts_aki_as_future_v2t():
    from futuremask.cli import build_parser

    parse = build_parser().parse_args

    def resolved(names):
        return [fm.get_policy(n).name for n in names]

    train = parse(["train", "--policy", "aki", "original", "--eval-policies", "aki", "--output-dir", "x"])
    assert resolved(train.policy) == ["future_v2t", "causal"]
    assert resolved(train.eval_policies) == ["future_v2t"]
    assert resolved(parse(["bench", "--policy", "aki"]).policy) == ["future_v2t"]
    assert resolved(parse(["eval", "--policy", "aki"]).policy) == ["future_v2t"]
    assert resolved(parse(["tune", "--policy", "aki"]).policy) == ["future_v2t"]
    assert resolved([parse(["show-mask", "--merge-policy", "aki"]).merge_policy]) == ["future_v2t"]
    assert resolved(parse(["verify", "--model", "m", "--policy", "aki"]).policy) == ["future_v2t"]
