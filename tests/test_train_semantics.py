"""Training semantics: with labels, every supervised token starts a new segment, the answer never
leaks into earlier positions, and gradients match an independent dense-mask forward."""

from __future__ import annotations

import pytest
import torch

import futuremask as fm
from futuremask.kernels import merge_attention
from futuremask.layout import IGNORE_INDEX, TokenLayout
from futuremask.tiny import tiny_llava

NON_CAUSAL = [p for p in fm.POLICIES if p != "causal"]


@pytest.fixture(scope="module")
def tiny():
    model, _ = tiny_llava(seed=3)
    return model.float()


def _batch(model, seed: int = 0):
    """Two rows: text(3) image(16) text(4) image(16) text(3) | answer(5); row 1 left-padded by 2.

    Returns (inputs with labels, index of the first answer token).
    """
    g = torch.Generator().manual_seed(seed)
    img = model.config.image_token_id
    rows, labels = [], []
    for _ in range(2):
        parts = [torch.randint(5, 60, (3,), generator=g), torch.full((16,), img),
                 torch.randint(5, 60, (4,), generator=g), torch.full((16,), img), torch.randint(5, 60, (3,), generator=g)]
        prompt = torch.cat(parts)
        answer = torch.randint(5, 60, (5,), generator=g)
        rows.append(torch.cat([prompt, answer]))
        labels.append(torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer]))
    ids, lab = torch.stack(rows), torch.stack(labels)
    am = torch.ones_like(ids)
    ids[1, :2], am[1, :2], lab[1, :2] = 0, 0, IGNORE_INDEX  # left padding (covers part of the first text)
    pixels = torch.randn(4, 3, 32, 32, generator=g)
    return {"input_ids": ids, "attention_mask": am, "pixel_values": pixels, "labels": lab}, 42


def test_labels_give_supervised_positions_and_segments(tiny):
    ids = torch.tensor([[0, 0, 7, 8, 9, 10, 11, 12, 13], [5, 6, 7, 8, 9, 10, 11, 12, 13]])
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    # row 0: supervised at 5, 6 and 8, with an unsupervised gap at 7 (e.g. a second user turn)
    lab = torch.tensor([[-100, -100, -100, -100, -100, 10, 11, -100, 13], [-100] * 8 + [13]])
    lay = TokenLayout.from_inputs(tiny.config, input_ids=ids, attention_mask=am, labels=lab)
    expected = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(lay.prompt, expected)
    assert torch.equal(lay.supervised, am.bool() & ~expected)
    # a new segment at each supervised position: the gap at 7 shares the segment of the answer token 6
    seg = lay.segment
    assert [len(set(seg[0, 2:5].tolist())), seg[0, 5] != seg[0, 4], seg[0, 7] == seg[0, 6], seg[0, 8] != seg[0, 7]] \
        == [1, True, True, True]
    assert (seg[1, :8] == seg[1, 0]).all() and seg[1, 8] != seg[1, 7]
    assert lay.segment_end.tolist() == [[5, 5, 5, 5, 5, 6, 8, 8, 9], [8] * 8 + [9]]
    # an explicit prompt_mask wins over the labels
    pm = torch.ones_like(am, dtype=torch.bool)
    lay2 = TokenLayout.from_inputs(tiny.config, input_ids=ids, attention_mask=am, labels=lab, prompt_mask=pm)
    assert torch.equal(lay2.prompt, am.bool())


def _dense_reference(model, inputs, policy: str, prompt: torch.Tensor):
    """The stock model (no futuremask) given the policy's full 4-D boolean mask from fm.build_mask."""
    ids, am = inputs["input_ids"], inputs["attention_mask"]
    mask = fm.build_mask(policy, ids == model.config.image_token_id, attention_mask=am, prompt_mask=prompt)
    mask = mask | torch.eye(ids.shape[1], dtype=torch.bool)  # padding query rows are unspecified: give them a key
    model.set_attn_implementation({"text_config": "sdpa"})
    return model(**{**inputs, "attention_mask": mask[:, None]})


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def _assert_same_grads(got, want):
    """Every parameter's gradient of ``got`` equals ``want``'s (and there are gradients to compare)."""
    assert got.keys() == want.keys() and len(want) > 20
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("policy", fm.POLICIES)
def test_gradients_match_dense_mask_forward(tiny, policy, backend):
    inputs, first = _batch(tiny)
    prompt = inputs["attention_mask"].bool().clone()
    prompt[:, first:] = False  # by hand: everything before the first answer token
    ref = _dense_reference(tiny, inputs, policy, prompt)
    ref_grads = _grads(tiny, ref.loss)
    with fm.apply(tiny, policy, backend=backend):
        out = tiny(**inputs)
    grads = _grads(tiny, out.loss)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    _assert_same_grads(grads, ref_grads)


def test_explicit_prompt_mask_overrides_labels(tiny):
    inputs, _ = _batch(tiny, seed=1)
    all_prompt = inputs["attention_mask"].bool()
    ref = _dense_reference(tiny, inputs, "mma", all_prompt)
    with fm.apply(tiny, "mma"), torch.no_grad():
        out = tiny(**inputs, prompt_mask=all_prompt)
        derived = tiny(**inputs)
    torch.testing.assert_close(out.logits, ref.logits.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out.logits, derived.logits, atol=1e-4)  # the override really changed the mask


def _change_answer_tail(inputs, start: int):
    ids, lab = inputs["input_ids"].clone(), inputs["labels"].clone()
    ids[:, start:] = (ids[:, start:] + 11) % 50 + 5
    lab[:, start:] = ids[:, start:]
    return {**inputs, "input_ids": ids, "labels": lab}


CASES = [(p, {"backend": b}) for p in fm.POLICIES for b in ("sdpa", "eager")]
CASES += [(p, {"merge": m}) for p in ("future", "mma") for m in ("kernel", "lse")]


@pytest.mark.parametrize(("policy", "kwargs"), CASES)
def test_no_answer_leak(tiny, policy, kwargs):
    """Logits and hidden states (visual rows included) before a changed answer token are unchanged."""
    inputs, first = _batch(tiny, seed=2)
    valid = inputs["attention_mask"].bool()
    with fm.apply(tiny, policy, **kwargs), torch.no_grad():
        for start in (first, first + 3):  # change the whole answer, then only its later tokens
            a = tiny(**inputs, output_hidden_states=True)
            b = tiny(**_change_answer_tail(inputs, start), output_hidden_states=True)
            keep = valid[:, :start]
            torch.testing.assert_close(a.logits[:, :start][keep], b.logits[:, :start][keep], rtol=0, atol=1e-6)
            for ha, hb in zip(a.hidden_states, b.hidden_states, strict=True):
                torch.testing.assert_close(ha[:, :start][keep], hb[:, :start][keep], rtol=0, atol=1e-6)


@pytest.mark.parametrize("policy", ["future", "future_v2t", "mma"])
def test_leak_check_is_sensitive(tiny, policy):
    """Without labels the whole sequence is prompt, so a visual row does see the changed tail: the check above can fail."""
    inputs, first = _batch(tiny, seed=2)
    plain = {k: v for k, v in inputs.items() if k != "labels"}
    changed = {k: v for k, v in _change_answer_tail(inputs, first).items() if k != "labels"}
    with fm.apply(tiny, policy), torch.no_grad():
        a, b = tiny(**plain).logits, tiny(**changed).logits
    assert (a[:, :first] - b[:, :first]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["kernel", "lse"])
@pytest.mark.parametrize("policy", ["future", "mma"])
def test_merge_gradients_match_finite_differences(policy, kind):
    g = torch.Generator().manual_seed(0)
    b, h, length, d = 2, 2, 9, 4
    q = torch.randn(b, h, length, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, 1, length, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, 1, length, d, generator=g, dtype=torch.float64, requires_grad=True)
    vis = torch.tensor([0, 1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    am = torch.ones(b, length, dtype=torch.long)
    am[1, :2] = 0
    prompt = am.bool().clone()
    prompt[:, -2:] = False
    keep = am.bool()[:, None, :, None].expand(b, h, length, d)
    # the kernel the model trains with (fm.attention computes the merge its own, slow, literal way)
    layout = TokenLayout.from_masks(vis.expand(b, -1), attention_mask=am, prompt_mask=prompt)
    base = fm.build_mask("causal", vis, attention_mask=am, prompt_mask=prompt)
    future = fm.build_mask(policy, vis, attention_mask=am, prompt_mask=prompt) & ~base
    merge = fm.Merge(kind)

    def f(q, k, v):
        return merge_attention(q, k, v, base, future, merge=merge, prefix_positions=layout.sequence_sinks(1),
                               prompt_end=layout.segment_end)[keep]

    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("kind", ["kernel", "lse"])
def test_merge_backward_through_model(tiny, kind):
    inputs, _ = _batch(tiny, seed=4)
    with fm.apply(tiny, "mma", merge=kind):
        out = tiny(**inputs)
    grads = _grads(tiny, out.loss)
    assert len(grads) > 20
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "vision_tower" in n)
