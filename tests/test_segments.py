"""The segment rule (DESIGN §2-§4) on layouts with several supervised spans and packed sequences.

Each check is against an independent computation: the rule written out pair by pair, DESIGN §4
row by row, the stock model given a dense 4-D mask from the literal rule, and each packed sample alone.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from test_attention import make_qkv, merged_weights, reference_out
from test_policies import definition
from test_train_semantics import _assert_same_grads, _grads

import futuremask as fm
from futuremask.layout import IGNORE_INDEX
from futuremask.tiny import tiny_llava


def literal(policy: str, i: int, j: int, mod, valid, prompt, starts) -> bool:
    """allowed(i, j) with the segment rule spelled out: ``starts[t]`` = a packed sequence starts at ``t``."""
    if j <= i:  # the model's own mask: causal within one packed sequence
        return valid[j] and not any(starts[t] for t in range(j + 1, i + 1))
    broken = any(starts[t] or (valid[t] and not prompt[t]) for t in range(i + 1, j + 1))
    return not broken and definition(policy, i, j, mod, valid, prompt)


def segment_stop(i: int, valid, prompt, starts) -> int:
    """One past the last valid position reachable from ``i`` with no segment break in between."""
    stop = i + 1
    for t in range(i + 1, len(valid)):
        if starts[t] or (valid[t] and not prompt[t]):
            break
        if valid[t]:
            stop = t + 1
    return stop


def random_packed_layout(rng: random.Random, length: int):
    """Interleaved modality runs in 1-3 packed sequences, several supervised (text) spans, some left padding."""
    mod = []
    while len(mod) < length:
        mod += [rng.choice([0, 0, 1, 1, 2])] * rng.randint(1, 5)
    mod = mod[:length]
    cuts = sorted(rng.sample(range(1, length), rng.randint(0, min(2, length - 1))))
    position_ids, starts = [], [False] * length
    for a, b in zip([0, *cuts], [*cuts, length], strict=True):
        position_ids += list(range(b - a))
        starts[a] = a > 0
    pad = 0 if cuts else rng.randint(0, length // 4)
    valid = [t >= pad for t in range(length)]
    supervised = [False] * length
    t = pad
    while t < length:
        if rng.random() < 0.2:
            for u in range(t, min(t + rng.randint(1, 3), length)):
                supervised[u], mod[u] = True, 0  # an answer is text
            t += 3
        t += 1
    mod = [m if v else 0 for m, v in zip(mod, valid, strict=True)]
    prompt = [v and not s for v, s in zip(valid, supervised, strict=True)]
    return mod, valid, prompt, starts, position_ids


def _random_batch(rng: random.Random):
    batch, length = rng.randint(1, 3), rng.randint(3, 26)
    rows = [random_packed_layout(rng, length) for _ in range(batch)]
    mod, valid, prompt, _, pos = (torch.tensor([r[f] for r in rows]) for f in range(5))
    return rows, mod, valid, prompt, pos


@pytest.mark.parametrize("policy", fm.POLICIES)
def test_build_mask_follows_the_segment_rule_on_random_layouts(policy):
    rng = random.Random("segments-" + policy)
    for _ in range(15):
        rows, mod, valid, prompt, pos = _random_batch(rng)
        got = fm.build_mask(policy, mod != 0, attention_mask=valid.long(), prompt_mask=prompt, modality=mod,
                            position_ids=pos)
        for b, (m, v, p, st, _) in enumerate(rows):
            for i in range(len(m)):
                if v[i]:  # padding query rows are unspecified
                    want = [literal(policy, i, j, m, v, p, st) for j in range(len(m))]
                    assert got[b, i].tolist() == want, (policy, b, i, m, v, p, st)


@pytest.mark.parametrize(("kind", "pool", "prefix"), [("kernel", "max", 1), ("kernel", "mean", 2), ("lse", "max", 2)])
@pytest.mark.parametrize("policy", ["future", "mma"])
def test_merge_windows_stop_at_the_segment_and_sink_is_the_sequence_start(policy, kind, pool, prefix):
    rng = random.Random(f"merge-{policy}-{kind}-{prefix}")
    for trial in range(4):
        rows, mod, valid, prompt, pos = _random_batch(rng)
        rows = [([min(x, 1) for x in r[0]], *r[1:]) for r in rows]  # fm.attention knows visual, not the modality
        q, k, v = make_qkv(batch=len(rows), heads=2, kv_heads=1, length=mod.shape[1], dim=4, seed=trial)
        merge = fm.Merge(kind=kind, kernel=3, pool=pool, prefix=prefix)
        got = fm.attention(q, k, v, policy=policy, is_visual=mod != 0, attention_mask=valid.long(),
                           prompt_mask=prompt, merge=merge, position_ids=pos)

        def weights(b, i, s, rows=rows):
            m, va, p, st, _ = rows[b]
            future = [[literal(policy, a, c, m, va, p, st) and c > a for c in range(len(m))] for a in range(len(m))]
            sequence = [sum(st[: t + 1]) for t in range(len(m))]
            return merged_weights(future, va, i, s, kind, 3, pool, prefix, prompt_len=segment_stop(i, va, p, st),
                                  sequence=sequence)

        want = reference_out(q, k, v, weights)
        keep = valid[:, None, :, None].expand_as(got)
        torch.testing.assert_close(got[keep], want[keep])


# --- the model: multi-turn and packed rows --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    model, _ = tiny_llava(seed=5)
    return model.float()


def _sample(model, g: torch.Generator, turns: int = 1):
    """``turns`` x (text image text | answer): ids, labels long ``[n]`` and the turns' pixel values."""
    img = model.config.image_token_id
    ids, labels = [], []
    for _ in range(turns):
        prompt = torch.cat([torch.randint(5, 60, (2,), generator=g), torch.full((16,), img),
                            torch.randint(5, 60, (2,), generator=g)])
        answer = torch.randint(5, 60, (3,), generator=g)
        ids += [prompt, answer]
        labels += [torch.full_like(prompt, IGNORE_INDEX), answer]
    return torch.cat(ids), torch.cat(labels), torch.randn(turns, 3, 32, 32, generator=g)


def _literal_mask(policy: str, ids, labels, img: int, starts) -> torch.Tensor:
    """bool ``[1, 1, L, L]`` from :func:`literal` (a padding-free row)."""
    mod = (ids == img).long().tolist()
    valid = [True] * len(mod)
    prompt = (labels == IGNORE_INDEX).tolist()
    n = len(mod)
    return torch.tensor([[literal(policy, i, j, mod, valid, prompt, starts) for j in range(n)] for i in range(n)])[
        None, None
    ]


def _packed(model, n_samples: int, turns: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    samples = [_sample(model, g, turns) for _ in range(n_samples)]
    ids = torch.cat([s[0] for s in samples])[None]
    labels = torch.cat([s[1] for s in samples])[None]
    position_ids = torch.cat([torch.arange(s[0].numel()) for s in samples])[None]
    starts = [False] * ids.shape[1]
    offset = 0
    for s in samples[:-1]:
        offset += s[0].numel()
        starts[offset] = True
    inputs = {"input_ids": ids, "labels": labels, "pixel_values": torch.cat([s[2] for s in samples])}
    if n_samples > 1:
        inputs["position_ids"] = position_ids
    return inputs, samples, starts


SHAPES = [(1, 2), (2, 1), (3, 1), (2, 2)]  # (packed samples, turns per sample)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("policy", ["future", "future_v2t", "mma", "image_bidirectional"])
@pytest.mark.parametrize(("n_samples", "turns"), SHAPES)
def test_multi_turn_and_packed_rows_match_the_literal_dense_mask(tiny, policy, backend, n_samples, turns):
    inputs, _, starts = _packed(tiny, n_samples, turns, seed=n_samples * 10 + turns)
    mask = _literal_mask(policy, inputs["input_ids"][0], inputs["labels"][0], tiny.config.image_token_id, starts)
    tiny.set_attn_implementation({"text_config": "sdpa"})
    ref = tiny(**inputs, attention_mask=mask, use_cache=False)
    ref_grads = _grads(tiny, ref.loss)
    with fm.apply(tiny, policy, backend=backend):
        out = tiny(**inputs, use_cache=False)
    grads = _grads(tiny, out.loss)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    _assert_same_grads(grads, ref_grads)


def test_turn_two_image_sees_its_own_question(tiny):
    """The literal rule gives a turn-2 image its future (the old 'prompt ends at the first label' did not)."""
    inputs, _, starts = _packed(tiny, 1, 2, seed=7)
    ids, labels = inputs["input_ids"][0], inputs["labels"][0]
    mask = _literal_mask("future", ids, labels, tiny.config.image_token_id, starts)[0, 0]
    second_image = int((ids == tiny.config.image_token_id).nonzero()[16])
    assert mask[second_image, second_image + 16]  # the text after the turn-2 image, before answer 2
    first_answer = int((labels != IGNORE_INDEX).nonzero()[0])
    assert not mask[:first_answer, first_answer:].any()  # turn 1 never sees answer 1 or anything after it


VARIANTS = [("future", {"backend": "sdpa"}), ("mma", {"backend": "eager"}), ("future_v2t", {"backend": "flex"}),
            ("mma", {"merge": "kernel"}), ("future", {"merge": fm.Merge("lse", prefix=2)})]


@pytest.mark.parametrize(("policy", "kwargs"), VARIANTS)
@pytest.mark.parametrize("with_labels", [True, False])
def test_each_packed_sample_equals_itself_alone(tiny, policy, kwargs, with_labels):
    inputs, samples, _ = _packed(tiny, 3, 2, seed=11)
    if not with_labels:
        inputs.pop("labels")
    with fm.apply(tiny, policy, **kwargs), torch.no_grad():
        packed = tiny(**inputs, use_cache=False).logits[0]
        start = 0
        for ids, labels, pixels in samples:
            alone = {"input_ids": ids[None], "pixel_values": pixels}
            if with_labels:
                alone["labels"] = labels[None]
            want = tiny(**alone, use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + ids.numel()], want, rtol=1e-5, atol=1e-5)
            start += ids.numel()


def test_packed_rows_with_a_cache_are_refused_or_warned(tiny):
    """Paired: with use_cache left at its default, transformers does not see the packing and the second
    sample attended the first (its logits moved by ~0.6); now refused under a policy, warned under causal."""
    inputs, samples, _ = _packed(tiny, 2, 1, seed=5)
    ids, labels, pixels = samples[-1]
    start = inputs["input_ids"].shape[1] - ids.numel()
    with fm.apply(tiny, "mma"), torch.no_grad():
        with pytest.raises(ValueError, match="use_cache=False"):  # fm.hf.PackedCacheError
            tiny(**inputs)
        packed = tiny(**inputs, use_cache=False).logits[0, start:]
        alone = tiny(input_ids=ids[None], labels=labels[None], pixel_values=pixels, use_cache=False).logits[0]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    with fm.apply(tiny, "causal"), torch.no_grad():
        with pytest.warns(UserWarning, match="packed rows .* KV cache"):
            mixed = tiny(**inputs).logits[0, start:]
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # once per handle
            tiny(**inputs)
    assert (mixed - alone).abs().max() > 1e-2  # what the cache does to packed rows (stock transformers too)
