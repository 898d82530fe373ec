"""Per-layer schedules (fm.apply(..., layers=...)) against a stock model given each layer's own dense mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import encode
from families import FAMILIES, TinyVLM, build_inputs
from test_families import IMAGE_PROMPT, definition_mask, logits_of
from test_hf import LayerwiseReference, generate, manual_generate

import futuremask as fm
from futuremask.layers import describe_layers, parse_layers, resolve_layers
from futuremask.tiny import tiny_llava

LAYERS = 3


@pytest.fixture(scope="module")
def llava3():
    return tiny_llava(num_layers=LAYERS, seed=3)


@pytest.fixture(scope="module")
def batch3(llava3, prompts):
    _, processor = llava3
    return encode(processor, [prompts["two_images"][0], prompts["image_first"][0]], [2, 1])


class PerLayerDense(LayerwiseReference):
    """A stock SDPA attention that gives layer ``i`` the dense mask ``fm.build_mask(policy_of(i))``.

    Decoding steps (one query) attend the whole cache, as the stock model does.
    """

    name = "fm_test_per_layer_dense"

    def __init__(self, model, inputs, policy_of, merge=None):
        self.model, self.policy_of, self.merge = model, policy_of, merge
        self.is_visual = inputs["input_ids"] == model.config.image_token_id
        self.attention_mask = inputs["attention_mask"]

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        policy = self.policy_of(module.layer_idx)
        if query.shape[2] == 1:
            out = F.scaled_dot_product_attention(query, key, value, scale=scaling)
        elif self.merge is not None and policy != "causal":
            out = fm.attention(query, key, value, policy=policy, is_visual=self.is_visual,
                               attention_mask=self.attention_mask, merge=self.merge, scale=scaling)
        else:
            mask = fm.build_mask(policy, self.is_visual, attention_mask=self.attention_mask)[:, None]
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
        return out.transpose(1, 2).contiguous(), None


def _logits(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw)


@pytest.mark.parametrize("backend", ["sdpa", "eager", "flex"])
@pytest.mark.parametrize("layers", [[0], [1, 2], range(1, 2), lambda i: i != 1, "0,2"])
def test_schedule_equals_per_layer_dense_masks(llava3, batch3, backend, layers):
    model, _ = llava3
    chosen = resolve_layers(layers, LAYERS)
    with PerLayerDense(model, batch3, lambda i: "future" if i in chosen else "causal"):
        want = _logits(model, batch3).logits
    with fm.apply(model, "future", backend=backend, layers=layers):
        got = _logits(model, batch3).logits
    plain = _logits(model, batch3).logits
    with fm.apply(model, "future", backend=backend):
        everywhere = _logits(model, batch3).logits
    valid = batch3["attention_mask"].bool()
    assert (got - want)[valid].abs().max() <= 1e-5
    assert (got - plain)[valid].abs().max() > 1e-4  # the scheduled layers do change the output
    assert (got - everywhere)[valid].abs().max() > 1e-4  # and the others stay causal


@pytest.mark.parametrize("merge", [fm.Merge("kernel"), fm.Merge("lse")])
def test_schedule_with_merge_equals_per_layer_reference(llava3, batch3, merge):
    model, _ = llava3
    with PerLayerDense(model, batch3, lambda i: "mma" if i == 2 else "causal", merge=merge):
        want = _logits(model, batch3).logits
    with fm.apply(model, "mma", merge=merge, layers=[2]):
        got = _logits(model, batch3).logits
    valid = batch3["attention_mask"].bool()
    assert (got - want)[valid].abs().max() <= 1e-5


@pytest.mark.parametrize("policy", ["future_v2v", "mma"])
def test_generate_is_scheduled_prefill_then_causal_decode(llava3, batch3, policy):
    model, _ = llava3
    with PerLayerDense(model, batch3, lambda i: policy if i < 2 else "causal"):
        out = _logits(model, batch3, use_cache=True)
    want = manual_generate(model, batch3, (out.logits, out.past_key_values), steps=5)
    with fm.apply(model, policy, layers="0-1"):
        got = generate(model, batch3, 5)
    assert torch.equal(got, want)


@pytest.mark.parametrize("policy, merge", [("future", None), ("mma", fm.Merge("kernel"))])
def test_continuation_logprob_follows_the_schedule(llava3, batch3, policy, merge):
    """Scored in one pass = the per-layer dense prefill, then the continuation decoded causally token by token."""
    model, _ = llava3
    cont = torch.tensor([[9, 12, 30], [14, 14, 8]])
    with PerLayerDense(model, batch3, lambda i: "causal" if i == 0 else policy, merge=merge):
        out = _logits(model, batch3, use_cache=True)
    attn, want = batch3["attention_mask"], torch.zeros(len(cont))
    for t in range(cont.shape[1]):
        token = cont[:, t : t + 1]
        want += torch.log_softmax(out.logits[:, -1].float(), -1).gather(-1, token).squeeze(-1)
        attn = torch.cat([attn, torch.ones_like(token)], dim=1)
        out = _logits(model, {"input_ids": token, "attention_mask": attn}, past_key_values=out.past_key_values,
                      use_cache=True)
    got = fm.continuation_logprob(model, batch3, cont, policy=policy, merge=merge, layers="1-2")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    every_layer = fm.continuation_logprob(model, batch3, cont, policy=policy, merge=merge)
    assert (got - every_layer).abs().max() > 1e-3  # layer 0 causal: the schedule reached the scoring pass


@pytest.mark.parametrize("layers", ["all", None, range(LAYERS), [2, 0, 1, 1]])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_a_schedule_of_every_layer_is_the_plain_policy_bit_for_bit(llava3, batch3, layers, backend):
    model, _ = llava3
    with fm.apply(model, "future", backend=backend):
        want = _logits(model, batch3).logits
    with fm.apply(model, "future", backend=backend, layers=layers) as handle:
        got = _logits(model, batch3).logits
        assert handle.layers is None
    assert torch.equal(got, want)


def test_layer_specs_parse_and_bad_ones_are_refused(llava3):
    model, _ = llava3
    assert parse_layers("0-3,6") == [0, 1, 2, 3, 6]
    assert describe_layers(frozenset({0, 1, 2, 5, 7, 8})) == "0-2,5,7-8"
    assert resolve_layers("0-1", 3) == frozenset({0, 1})
    with pytest.raises(ValueError, match="do not exist: the text model has layers 0-2"):
        fm.apply(model, "future", layers=[3])
    with pytest.raises(ValueError, match="selects no layer"):
        fm.apply(model, "future", layers=lambda i: False)
    with pytest.raises(ValueError, match="'0-15' or '0-7,12'"):
        parse_layers("3-1")
    assert not hasattr(model, "_futuremask")  # a refused schedule leaves the model untouched
    assert repr(fm.apply(model, "mma", layers=[1])).startswith("FutureMask(policy='mma', layers='1'")
    model._futuremask.remove()


def test_gradient_checkpointing_recomputes_each_layer_with_its_own_mask(llava3, batch3):
    """Recomputation runs outside the forward call: the schedule must travel with the mask itself."""
    model, _ = llava3
    labels = batch3["input_ids"].clone()
    labels[:, :-3] = -100

    def loss_and_grads(checkpointing, layers):
        model.zero_grad()
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            with fm.apply(model, "future", layers=layers):
                loss = model(**batch3, labels=labels, use_cache=False).loss
                loss.backward()
        finally:
            model.gradient_checkpointing_disable()
            model.eval()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad()
        return loss.detach(), grads

    plain_loss, plain = loss_and_grads(False, [1])
    loss, grads = loss_and_grads(True, [1])
    assert torch.equal(loss, plain_loss) and (grads - plain).abs().max() <= 1e-6
    _, everywhere = loss_and_grads(False, None)
    assert (plain - everywhere).abs().max() > 1e-3  # the schedule changes the gradients


# --- every family: a schedule equals each layer given its own dense definition mask -------------------


@pytest.fixture(scope="module", params=list(FAMILIES))
def vlm(request) -> TinyVLM:
    return FAMILIES[request.param]()


class FamilyPerLayer(LayerwiseReference):
    """Stock SDPA per layer with ``definition_mask(policy_of(layer))`` (test_families), cut to the window on
    a sliding-window layer, as Gemma3 cuts its own mask."""

    name = "fm_test_family_per_layer"

    def __init__(self, vlm: TinyVLM, inputs, policy_of):
        self.model, self.vlm, self.policy_of = vlm.model, vlm, policy_of
        self.ids = inputs["input_ids"][0]

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        rep = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        mask = definition_mask(self.policy_of(module.layer_idx), self.ids, self.vlm)
        window = getattr(module, "sliding_window", None)
        if window:
            i, j = torch.arange(len(self.ids))[:, None], torch.arange(len(self.ids))[None, :]
            mask = mask & (j > i - window)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
        return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("scheduled", [0, 1])
def test_every_family_schedule_equals_per_layer_definition_masks(vlm, scheduled):
    inputs = build_inputs(vlm, IMAGE_PROMPT)
    with FamilyPerLayer(vlm, inputs, lambda i: "future" if i == scheduled else "causal"):
        want = logits_of(vlm, inputs)
    with fm.apply(vlm.model, "future", layers=[scheduled]):
        got = logits_of(vlm, inputs)
    with fm.apply(vlm.model, "future"):
        everywhere = logits_of(vlm, inputs)
    assert (got - want).abs().max() <= 1e-5
    assert (got - logits_of(vlm, inputs)).abs().max() > 1e-4 and (got - everywhere).abs().max() > 1e-4
