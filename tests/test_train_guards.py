"""Training under a policy in the usual set-ups: the refusal of label-less training forwards, the
empty-prompt warning, PEFT wrappers, and gradient checkpointing (each against an independent run)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import draw_image, encode
from test_hf import generate, manual_generate, policy_mask4d, stock_logits
from test_train_semantics import _assert_same_grads, _grads

import futuremask as fm
from futuremask.layout import IGNORE_INDEX
from futuremask.tiny import tiny_llava


@pytest.fixture(scope="module")
def tiny():
    model, _ = tiny_llava(seed=9)
    return model.float()


def _batch(model, seed: int = 0):
    """Two rows of text(2) image(16) text(3) | answer(4), row 1 left-padded by 2."""
    g = torch.Generator().manual_seed(seed)
    img = model.config.image_token_id
    rows, labels = [], []
    for _ in range(2):
        prompt = torch.cat([torch.randint(5, 60, (2,), generator=g), torch.full((16,), img),
                            torch.randint(5, 60, (3,), generator=g)])
        answer = torch.randint(5, 60, (4,), generator=g)
        rows.append(torch.cat([prompt, answer]))
        labels.append(torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer]))
    ids, lab = torch.stack(rows), torch.stack(labels)
    am = torch.ones_like(ids)
    ids[1, :2], am[1, :2], lab[1, :2] = 0, 0, IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": am, "labels": lab,
            "pixel_values": torch.randn(2, 3, 32, 32, generator=g)}


# --- the refusal and the warning ------------------------------------------------------------------


def test_training_forward_without_labels_or_prompt_mask_is_refused(tiny):
    inputs = _batch(tiny)
    unlabelled = {k: v for k, v in inputs.items() if k != "labels"}
    prompt_mask = inputs["attention_mask"].bool() & (inputs["labels"] == IGNORE_INDEX)
    tiny.train()
    try:
        with fm.apply(tiny, "mma"):
            with pytest.raises(fm.MissingPromptError, match="prompt_mask.*SFTCollator"):
                tiny(**unlabelled)
            tiny(**inputs)  # labels: fine
            with_mask = tiny(**unlabelled, prompt_mask=prompt_mask).logits  # prompt_mask: fine, same layout
            torch.testing.assert_close(with_mask, tiny(**inputs).logits)
            with torch.no_grad():
                tiny(**unlabelled)  # no gradients: an inference pass
        with fm.apply(tiny, "causal"):
            tiny(**unlabelled)  # causal opens nothing
    finally:
        tiny.eval()


def test_an_evaluation_forward_with_labels_is_the_training_forward(tiny):
    """Eval mode, no gradients: the labels still mark the answer, exactly as in training (no dropout here)."""
    inputs = _batch(tiny, seed=2)
    with fm.apply(tiny, "future"):
        with torch.no_grad():
            evaluated = tiny(**inputs).logits
        tiny.train()
        try:
            trained = tiny(**inputs).logits.detach()
        finally:
            tiny.eval()
    torch.testing.assert_close(evaluated, trained, rtol=0, atol=0)


def test_the_refusal_prevents_a_real_leak(tiny):
    """Paired: a label-less forward (allowed outside training) lets logits before the answer move with it."""
    inputs = _batch(tiny, seed=1)
    first = int((inputs["labels"][0] != IGNORE_INDEX).nonzero()[0])
    changed = inputs["input_ids"].clone()
    changed[:, first:] = (changed[:, first:] + 7) % 50 + 5
    prompt_mask = inputs["attention_mask"].bool() & (inputs["labels"] == IGNORE_INDEX)
    plain = {k: v for k, v in inputs.items() if k != "labels"}
    with fm.apply(tiny, "mma"), torch.no_grad():
        leak = (tiny(**plain).logits - tiny(**{**plain, "input_ids": changed}).logits)[:, : first - 1]
        kept = (tiny(**plain, prompt_mask=prompt_mask).logits
                - tiny(**{**plain, "input_ids": changed}, prompt_mask=prompt_mask).logits)[:, : first - 1]
    valid = inputs["attention_mask"].bool()[:, : first - 1]
    assert leak[valid].abs().max() > 1e-4
    assert kept[valid].abs().max() <= 1e-6


def test_warns_once_when_the_loss_covers_every_token(tiny):
    inputs = _batch(tiny, seed=2)
    everything = {**inputs, "labels": torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], -100)}
    tiny.train()
    try:
        with fm.apply(tiny, "future_v2t"):
            with pytest.warns(UserWarning, match="no token can see anything more"):
                tiny(**everything)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                tiny(**everything)  # once
        with fm.apply(tiny, "future_v2t"), warnings.catch_warnings():
            warnings.simplefilter("error")
            tiny(**inputs)  # answer-only labels: the images see their question, no warning
    finally:
        tiny.eval()


def test_sft_collator_emits_the_prompt_mask(llava):
    from futuremask.train import SFTCollator

    _, processor = llava
    collator = SFTCollator(processor)
    examples = [{"content": [{"type": "image"}, {"type": "text", "text": "what color ?"}], "images": [draw_image(1)],
                 "answer": "red"},
                {"content": [{"type": "text", "text": "which shape"}, {"type": "image"}], "images": [draw_image(2)],
                 "answer": "a blue circle"}]
    batch = collator(examples)
    want = batch["attention_mask"].bool() & (batch["labels"] == IGNORE_INDEX)
    assert batch["prompt_mask"].dtype == torch.bool and torch.equal(batch["prompt_mask"], want)
    assert (~batch["prompt_mask"] & batch["attention_mask"].bool()).sum() == (batch["labels"] != IGNORE_INDEX).sum()


# --- PEFT -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora():
    peft = pytest.importorskip("peft")
    base, _ = tiny_llava(seed=4)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(base.float(), config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # LoRA starts as the identity; make the adapters matter
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_peft_generate_through_the_wrapper_follows_the_policy(lora, llava, prompts):
    batch = encode(llava[1], [prompts["two_images"][0], prompts["image_first"][0]], [2, 1])
    mask = policy_mask4d(lora, batch, "future")
    out = stock_logits(lora, batch, mask, use_cache=True)
    want = manual_generate(lora, batch, (out.logits, out.past_key_values), steps=6)
    with fm.apply(lora, "future"), torch.no_grad():
        got = generate(lora, batch, 6)
        static = generate(lora, batch, 6, cache_implementation="static")
        logits = lora(**batch).logits
    assert torch.equal(got, want) and torch.equal(static, want)
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], out.logits[valid], rtol=1e-5, atol=1e-5)
    causal = stock_logits(lora, batch).logits
    assert (logits - causal)[valid].abs().max() > 1e-4  # the policy really changed the prefill
    assert getattr(lora.get_base_model(), "_futuremask", None) is None and "_futuremask" not in lora.__dict__


def test_peft_gradients_reach_the_adapters_and_equal_the_dense_reference(lora):
    inputs = _batch(lora, seed=3)
    prompt = inputs["attention_mask"].bool() & (inputs["labels"] == IGNORE_INDEX)
    mask = fm.build_mask("mma", inputs["input_ids"] == lora.config.image_token_id,
                         attention_mask=inputs["attention_mask"], prompt_mask=prompt)
    mask = mask | torch.eye(mask.shape[-1], dtype=torch.bool)  # padding query rows are unspecified
    lora.train()
    try:
        want = _grads(lora, lora(**{**inputs, "attention_mask": mask[:, None]}).loss)
        with fm.apply(lora, "mma"):
            got = _grads(lora, lora(**inputs).loss)
    finally:
        lora.eval()
    adapters = [n for n in want if "lora_" in n]
    assert adapters and all(want[n].abs().sum() > 0 for n in adapters)
    assert got.keys() == want.keys()
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_peft_merge_and_unload_is_refused_while_applied(lora):
    handle = fm.apply(lora, "future")
    try:
        with pytest.raises(RuntimeError, match="handle.remove"):
            lora.merge_and_unload()
    finally:
        handle.remove()
    assert "merge_and_unload" not in lora.__dict__  # the wrapper's own method is back


# --- gradient checkpointing ----------------------------------------------------------------------


GC_VARIANTS = [{"backend": "sdpa"}, {"backend": "eager"}, {"merge": "kernel"}, {"merge": "lse"},
               pytest.param({"backend": "flex"}, marks=pytest.mark.skipif(
                   not torch.cuda.is_available(), reason="PyTorch has no FlexAttention backward on CPU"))]


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("kwargs", GC_VARIANTS)
def test_gradient_checkpointing_gives_the_same_gradients(kwargs, reentrant):
    """Backward after the ``with`` block, with checkpointing, equals backward inside it without."""
    model, _ = tiny_llava(seed=6)
    model = model.float()
    device = "cuda" if kwargs.get("backend") == "flex" else "cpu"
    model.to(device).train()
    inputs = {k: v.to(device) for k, v in _batch(model, seed=5).items()}
    with fm.apply(model, "mma", **kwargs):
        want = _grads(model, model(**inputs).loss)
        loss = model(**inputs).loss
    _assert_same_grads(_grads(model, loss), want)  # no checkpointing, backward after the block
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    with fm.apply(model, "mma", **kwargs):
        loss = model(**inputs).loss
    got = _grads(model, loss)  # the layers are recomputed here, after remove()
    _assert_same_grads(got, want)
    with fm.apply(model, "causal"):
        causal = _grads(model, model(**inputs).loss)
    assert any((causal[n] - want[n]).abs().max() > 1e-6 for n in want)  # the policy really shaped them


def test_a_trainers_evaluation_forward_needs_the_answer_marked_but_its_generate_does_not(tiny, tmp_path):
    """Inside a Trainer's prediction_step a label-less forward holds answers (refused); generate() from a
    prompt the caller chose, a forward with labels, and the same forward outside any trainer run as usual."""
    from transformers import Trainer, TrainingArguments

    class Probe(Trainer):
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            return model(**inputs) if prediction_loss_only else model.generate(**inputs, max_new_tokens=2)

    trainer = Probe(model=tiny, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    inputs = _batch(tiny, seed=3)
    unlabelled = {k: v for k, v in inputs.items() if k != "labels"}
    with fm.apply(tiny, "future"), torch.no_grad():
        with pytest.raises(fm.MissingPromptError, match="Probe's evaluation / prediction loop.*PromptMaskCollator"):
            trainer.prediction_step(tiny, unlabelled, True)
        trainer.prediction_step(tiny, inputs, True)
        trainer.prediction_step(tiny, unlabelled, False)
        tiny(**unlabelled)
