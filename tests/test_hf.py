"""fm.apply on a tiny LLaVA against the untouched model and independent computations."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import encode
from transformers import AttentionInterface, DynamicCache

import futuremask as fm

FUTURE = ("future", "future_v2v", "future_v2t", "mma", "image_bidirectional")
MAX_DIFF = 1e-6


def visual(model, ids):
    return ids == model.config.image_token_id


def stock_logits(model, inputs, mask4d=None, **kw):
    """The untouched model; with ``mask4d`` (bool [B, 1, L, L]) given as the attention mask."""
    call = dict(inputs)
    if mask4d is not None:
        call["attention_mask"] = mask4d
    with torch.no_grad():
        return model(**call, **kw)


def policy_mask4d(model, inputs, policy):
    return fm.build_mask(policy, visual(model, inputs["input_ids"]), attention_mask=inputs["attention_mask"])[:, None]


@pytest.fixture
def batch(llava, prompts):
    model, processor = llava
    texts = [prompts["two_images"][0], prompts["image_first"][0]]
    return encode(processor, texts, [2, 1])


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_causal_reproduces_stock_model_and_remove_restores(llava, batch, backend):
    model, _ = llava
    before = stock_logits(model, batch).logits
    impl = model.config.text_config._attn_implementation
    handle = fm.apply(model, "causal", backend=backend)
    assert model.config.text_config._attn_implementation == f"futuremask_{backend}"
    assert model.config.vision_config._attn_implementation == impl  # only the text backbone switches
    with torch.no_grad():
        during = model(**batch).logits
    handle.remove()
    after = stock_logits(model, batch).logits
    valid = batch["attention_mask"].bool()
    assert (during - before)[valid].abs().max() <= MAX_DIFF
    assert torch.equal(after, before)
    assert model.config.text_config._attn_implementation == impl
    assert not hasattr(model, "_futuremask") and "prepare_inputs_for_generation" not in vars(model)
    assert "__deepcopy__" not in vars(model)
    assert not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.parametrize("policy", FUTURE)
@pytest.mark.parametrize("backend", ["sdpa", "eager", "flex"])
def test_policy_equals_dense_mask_forward(llava, batch, policy, backend):
    model, _ = llava
    want = stock_logits(model, batch, policy_mask4d(model, batch, policy)).logits
    causal = stock_logits(model, batch).logits
    with fm.apply(model, policy, backend=backend), torch.no_grad():
        got = model(**batch).logits
    valid = batch["attention_mask"].bool()
    assert (got - want)[valid].abs().max() <= 1e-5
    assert (got - causal)[valid].abs().max() > 1e-3  # images followed by text: the policy matters


@pytest.mark.parametrize("policy", fm.POLICIES)
@pytest.mark.parametrize("merge", [None, "kernel", "lse"])
def test_text_only_prompt_is_unchanged(llava, prompts, policy, merge):
    model, processor = llava
    inputs = encode(processor, [prompts["text_only"][0]], [0])
    want = stock_logits(model, inputs).logits
    with fm.apply(model, policy, merge=merge), torch.no_grad():
        got = model(**inputs).logits
    assert (got - want).abs().max() <= MAX_DIFF


# --- model level = fm.attention layer by layer (the oracle), for plain and merged attention -------------


class LayerwiseReference:
    """A stock attention implementation that calls fm.attention with a layout known to the test."""

    name = "fm_test_layerwise_reference"

    def __init__(self, model, inputs, policy, merge):
        self.model, self.policy, self.merge = model, policy, merge
        self.is_visual = visual(model, inputs["input_ids"])
        self.attention_mask = inputs["attention_mask"]

    def __call__(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        if query.shape[2] == 1:  # decoding: plain attention over the cache
            out = torch.softmax((query @ key.repeat_interleave(query.shape[1] // key.shape[1], 1).transpose(-1, -2))
                                * scaling, -1) @ value.repeat_interleave(query.shape[1] // key.shape[1], 1)
        else:
            out = fm.attention(query, key, value, policy=self.policy, is_visual=self.is_visual,
                               attention_mask=self.attention_mask, merge=self.merge, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    def __enter__(self):
        AttentionInterface.register(self.name, self)
        self.previous = self.model.config.text_config._attn_implementation
        self.model.set_attn_implementation({"text_config": self.name})
        return self

    def __exit__(self, *exc):
        self.model.set_attn_implementation({"text_config": self.previous})


@pytest.mark.parametrize("policy", ["future", "future_v2v", "future_v2t", "mma"])
@pytest.mark.parametrize("merge", [None, fm.Merge("kernel"), fm.Merge("kernel", kernel=2, pool="mean", prefix=2),
                                   fm.Merge("lse")])
def test_model_equals_layerwise_reference(llava, batch, policy, merge):
    model, _ = llava
    unpadded = {k: v[:1] if k != "pixel_values" else v[:2] for k, v in batch.items()}
    for inputs in (unpadded, batch):
        with LayerwiseReference(model, inputs, policy, merge), torch.no_grad():
            want = model(**inputs).logits
        with fm.apply(model, policy, merge=merge), torch.no_grad():
            got = model(**inputs).logits
        valid = inputs["attention_mask"].bool()
        assert (got - want)[valid].abs().max() <= 1e-5


# --- generation ----------------------------------------------------------------------------------------


def manual_generate(model, inputs, prefill_logits_and_cache, steps):
    """Greedy decoding by hand: the given prefill, then causal steps of the stock model with the cache."""
    logits, cache = prefill_logits_and_cache
    attn = inputs["attention_mask"]
    tokens = []
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(steps):
        tokens.append(nxt)
        attn = torch.cat([attn, torch.ones_like(nxt)], dim=1)
        with torch.no_grad():
            out = model(input_ids=nxt, attention_mask=attn, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.cat(tokens, dim=1)


def generate(model, inputs, steps, **kw):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, **kw)
    return out[:, inputs["input_ids"].shape[1]:]


@pytest.mark.parametrize("policy", FUTURE)
def test_generate_equals_dense_prefill_then_causal_decode(llava, batch, policy):
    model, _ = llava
    out = stock_logits(model, batch, policy_mask4d(model, batch, policy), use_cache=True)
    want = manual_generate(model, batch, (out.logits, out.past_key_values), steps=6)
    with fm.apply(model, policy):
        got = generate(model, batch, 6)
    assert torch.equal(got, want)


@pytest.mark.parametrize("merge", [fm.Merge("kernel"), fm.Merge("lse")])
def test_generate_with_merge_equals_reference_prefill_then_causal_decode(llava, batch, merge):
    model, _ = llava
    with LayerwiseReference(model, batch, "future", merge), torch.no_grad():
        out = model(**batch, use_cache=True)
    want = manual_generate(model, batch, (out.logits, out.past_key_values), steps=6)
    with fm.apply(model, "future", merge=merge):
        got = generate(model, batch, 6)
    assert torch.equal(got, want)


@pytest.mark.parametrize("policy", ["future", "mma"])
def test_left_padded_batch_equals_each_sample_alone(llava, prompts, policy):
    model, processor = llava
    texts = [prompts["image_first"][0], prompts["two_images"][0], prompts["text_only"][0]]
    n_images = [1, 2, 0]
    batch = encode(processor, texts, n_images)
    assert (batch["attention_mask"] == 0).any()
    with fm.apply(model, policy):
        together = generate(model, batch, 5)
        for i, (text, n) in enumerate(zip(texts, n_images, strict=True)):
            alone = generate(model, encode(processor, [text], [n], seed=10 * i), 5)
            assert torch.equal(together[i], alone[0]), i


def test_layout_follows_beams_returned_sequences_and_static_cache(llava, batch):
    model, _ = llava
    want = stock_logits(model, batch, policy_mask4d(model, batch, "future_v2v")).logits[:, -1]
    with fm.apply(model, "future_v2v"), torch.no_grad():
        beams = model.generate(**batch, max_new_tokens=3, num_beams=3, num_return_sequences=2,
                               output_logits=True, return_dict_in_generate=True)
        sampled = model.generate(**batch, max_new_tokens=3, do_sample=True, num_return_sequences=3,
                                 output_logits=True, return_dict_in_generate=True)
        dynamic = generate(model, batch, 5)
        static = generate(model, batch, 5, cache_implementation="static")
    torch.testing.assert_close(beams.logits[0], want.repeat_interleave(3, 0), atol=1e-5, rtol=0)
    torch.testing.assert_close(sampled.logits[0], want.repeat_interleave(3, 0), atol=1e-5, rtol=0)
    assert beams.sequences.shape[0] == 4
    assert torch.equal(static, dynamic)


def test_bfloat16_causal_is_stock_and_future_runs(llava, batch):
    model = copy.deepcopy(llava[0]).to(torch.bfloat16)
    inputs = {**batch, "pixel_values": batch["pixel_values"].to(torch.bfloat16)}
    want = stock_logits(model, inputs).logits
    with fm.apply(model, "causal"), torch.no_grad():
        got = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert torch.equal(got[valid], want[valid])
    with fm.apply(model, "future"):
        tokens = generate(model, inputs, 4)
    assert tokens.shape == (2, 4)


# --- the causal contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["future", "future_v2v", "future_v2t", "image_bidirectional"])
def test_text_before_any_image_keeps_causal_hidden_states(llava, prompts, policy):
    model, processor = llava
    inputs = encode(processor, [prompts["two_images"][0]], [2])
    first_image = int(visual(model, inputs["input_ids"])[0].nonzero()[0])
    want = stock_logits(model, inputs, output_hidden_states=True).hidden_states
    with fm.apply(model, policy), torch.no_grad():
        got = model(**inputs, output_hidden_states=True).hidden_states
    for layer_want, layer_got in zip(want, got, strict=True):
        assert torch.equal(layer_got[:, :first_image], layer_want[:, :first_image])
    assert not torch.allclose(got[-1][:, first_image:], want[-1][:, first_image:])


def test_a_later_text_token_reaches_only_what_the_policy_allows(llava, batch):
    """Perturb the second-to-last (text) token and see which earlier rows move.

    Text queries never see it directly. Under causal, future_v2v and image_bidirectional nothing
    earlier moves at all; under future and future_v2t the visual rows see it, and text rows after
    an image see it only through those visual rows, while text before any image never moves.
    """
    model, _ = llava
    ids, valid = batch["input_ids"], batch["attention_mask"].bool()
    changed = {**batch, "input_ids": ids.clone()}
    changed["input_ids"][:, -2] = (ids[:, -2] + 1) % 20 + 5
    vis = visual(model, ids)
    before_image = (torch.cumsum(vis.long(), 1) == 0) & valid
    earlier = valid.clone()
    earlier[:, -2:] = False
    for policy in ("causal", "future", "future_v2v", "future_v2t", "image_bidirectional"):
        with fm.apply(model, policy), torch.no_grad():
            a = model(**batch, output_hidden_states=True).hidden_states[-1]
            b = model(**changed, output_hidden_states=True).hidden_states[-1]
        assert torch.equal(a[before_image], b[before_image]), policy
        if policy in ("future", "future_v2t"):
            assert not torch.allclose(a[vis & earlier], b[vis & earlier]), policy
        else:
            assert torch.equal(a[earlier], b[earlier]), policy


@pytest.mark.parametrize("policy", FUTURE)
def test_generated_tokens_never_reach_the_prompt_cache(llava, batch, policy):
    model, _ = llava
    length = batch["input_ids"].shape[1]
    with fm.apply(model, policy), torch.no_grad():
        prefill = model(**batch, use_cache=True).past_key_values
        caches = []
        for token in (7, 11):
            cache = copy.deepcopy(prefill)
            step = torch.full((2, 1), token)
            attn = torch.cat([batch["attention_mask"], torch.ones_like(step)], dim=1)
            model(input_ids=step, attention_mask=attn, past_key_values=cache, use_cache=True)
            caches.append(cache)
    for layer in range(len(prefill.layers)):
        kept = prefill.layers[layer].keys
        for cache in caches:
            assert torch.equal(cache.layers[layer].keys[:, :, :length], kept)
            assert torch.equal(cache.layers[layer].values[:, :, :length], prefill.layers[layer].values)
        assert not torch.equal(caches[0].layers[layer].keys[:, :, length:], caches[1].layers[layer].keys[:, :, length:])


# --- continuation scoring ------------------------------------------------------------------------------


def stepwise_logprob(model, inputs, continuation, policy, merge):
    """Prefill of the prompt under the policy, then the continuation decoded token by token (causal)."""
    with fm.apply(model, policy, merge=merge), torch.no_grad():
        out = model(**inputs, use_cache=True)
    cache, logits, attn = out.past_key_values, out.logits[:, -1], inputs["attention_mask"]
    total = torch.zeros(continuation.shape[0])
    for t in range(continuation.shape[1]):
        token = continuation[:, t : t + 1]
        total += torch.log_softmax(logits.float(), -1).gather(-1, token).squeeze(-1)
        attn = torch.cat([attn, torch.ones_like(token)], dim=1)
        with torch.no_grad():
            out = model(input_ids=token, attention_mask=attn, past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
    return total


@pytest.mark.parametrize("policy", fm.POLICIES)
@pytest.mark.parametrize("merge", [None, "kernel"])
def test_continuation_logprob_equals_stepwise_decoding(llava, batch, policy, merge):
    model, _ = llava
    continuation = torch.tensor([[9, 12, 30], [14, 14, 8]])
    got = fm.continuation_logprob(model, batch, continuation, policy=policy, merge=merge)
    want = stepwise_logprob(model, batch, continuation, policy, merge)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    ragged = fm.continuation_logprob(model, batch, [[9, 12], [14, 14, 8]], policy=policy, merge=merge)
    torch.testing.assert_close(ragged[1], want[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(ragged[0], stepwise_logprob(model, batch, continuation[:, :2], policy, merge)[0],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("policy", ["future", "future_v2t", "mma"])
def test_continuation_never_changes_visual_rows(llava, batch, policy):
    model, _ = llava
    vis = visual(model, batch["input_ids"])
    states = []
    for continuation in ([9, 12, 30], [40, 41, 42]):
        cont = torch.tensor([continuation] * 2)
        call = {**batch, "input_ids": torch.cat([batch["input_ids"], cont], 1),
                "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(cont)], 1),
                "prompt_mask": torch.cat([batch["attention_mask"].bool(), torch.zeros_like(cont, dtype=torch.bool)], 1)}
        with fm.apply(model, policy), torch.no_grad():
            hidden = model(**call, output_hidden_states=True).hidden_states
        states.append([h[:, : vis.shape[1]][vis] for h in hidden])
    for a, b in zip(*states, strict=True):
        assert torch.equal(a, b)


# --- errors ----------------------------------------------------------------------------------------------


def test_clear_errors(llava, batch):
    model, _ = llava
    with pytest.raises(ValueError, match="FlashAttention cannot express"):
        fm.apply(model, "future", backend="flash_attention_2")
    with pytest.raises(ValueError, match="unknown mask policy"):
        fm.apply(model, "futur")
    with pytest.raises(ValueError, match="unknown backend"):
        fm.apply(model, "future", backend="xformers")
    with pytest.raises(ValueError, match="merge kernel"):
        fm.apply(model, "future", merge="kernel", backend="eager")
    assert model.config.text_config._attn_implementation == "sdpa"
    with fm.apply(model, "future"):
        with pytest.raises(RuntimeError, match="already applied"):
            fm.apply(model, "mma")
        with pytest.raises(RuntimeError, match="outside"):
            fm.continuation_logprob(model, batch, torch.tensor([[1]]), policy="future")


def test_prefilled_cache_is_refused(llava, prompts):
    model, processor = llava
    inputs = encode(processor, [prompts["two_images"][0]], [2])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():  # the first two (text) tokens go into the cache first
        model(input_ids=inputs["input_ids"][:, :2], attention_mask=inputs["attention_mask"][:, :2], past_key_values=cache)
    with fm.apply(model, "future"), pytest.raises(fm.PromptSplitError, match="whole prompt in one pass"):
        model.generate(**inputs, past_key_values=cache, max_new_tokens=2)
    assert model.config.text_config._attn_implementation == "sdpa"


CHANGED_MASK_CASES = [
    ({"backend": "sdpa"}, 1), ({"backend": "eager"}, 1), ({"backend": "flex"}, 1), ({"merge": "kernel"}, 1),
    ({"backend": "sdpa", "layers": [1]}, 1), ({"backend": "flex", "layers": [1]}, 1),
    ({"backend": "sdpa", "layers": [1]}, 0), ({"backend": "flex", "layers": [1]}, 0),
]


@pytest.mark.parametrize("kwargs, layer", CHANGED_MASK_CASES, ids=lambda c: str(c).replace(" ", ""))
def test_a_layer_mask_changed_by_the_model_is_refused_not_run_causal(llava, batch, kwargs, layer):
    """The layers find the policy's rows by the mask object the builder made; a model (or a hook) that hands a
    layer another mask object must get an error, since that layer would otherwise run causal silently (or, on
    a layer a schedule leaves causal, run whatever the changed mask holds: with flex, the policy)."""
    model, _ = llava
    attn = model.model.language_model.layers[layer].self_attn

    def swap(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None:  # a copy of the same content (a tensor, or flex's BlockMask)
            kwargs["attention_mask"] = mask.clone() if isinstance(mask, torch.Tensor) else copy.copy(mask)
        return args, kwargs

    hook = attn.register_forward_pre_hook(swap, with_kwargs=True)
    try:
        assert batch["attention_mask"].min() == 0  # padded: the layers receive a mask tensor
        with fm.apply(model, "future", **kwargs), torch.no_grad():
            with pytest.raises(RuntimeError, match=f"layer {layer} of a prompt pass received an attention mask"):
                model(**batch)
        with fm.apply(model, "causal", **kwargs), torch.no_grad():
            model(**batch)  # the stock mask needs nothing found: causal runs as the stock model
    finally:
        hook.remove()
