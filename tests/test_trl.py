"""TRL's SFTTrainer under a policy (the documented recipes of docs/training.md), on the tiny LLaVA.

Each run starts from the same weights; the losses of a few steps under ``mma`` must differ from
``causal``, and the layouts the policy saw in those steps must keep the answer out of the prompt.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import draw_image

import futuremask as fm
from futuremask.layout import IGNORE_INDEX, TokenLayout
from futuremask.tiny import CHAT_TEMPLATE, tiny_llava
from futuremask.train import PromptMaskCollator

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

ANSWERS = ["red", "blue circle", "left", "green square"]
# the tiny template with TRL's {% generation %} markers around the assistant's text (assistant_only_loss)
TRAINING_TEMPLATE = CHAT_TEMPLATE.replace(
    "{% if message['content'] is string %}{{ message['content'] }}",
    "{% if message['role'] == 'assistant' %}{% generation %}{% for part in message['content'] %}"
    "{{ part['text'] }}{% endfor %}{% endgeneration %}{% elif message['content'] is string %}{{ message['content'] }}",
)


def _prompt_completion():
    return [{"prompt": "USER: <image> what is in the image ?\nASSISTANT:", "completion": " " + ANSWERS[i % 4],
             "images": [draw_image(i)]} for i in range(8)]


def _messages():
    return [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[i % 4]}]}],
             "images": [draw_image(i)]} for i in range(8)]


class _Recorder:
    """Records the layout of every model call that futuremask builds (hf_masks.Call reads it from the inputs)."""

    def __init__(self, monkeypatch):
        self.layouts = []
        real = TokenLayout.from_inputs

        def record(*args, **kwargs):
            layout = real(*args, **kwargs)
            self.layouts.append((kwargs, layout))
            return layout

        monkeypatch.setattr(TokenLayout, "from_inputs", record)


def _train(policy, rows, tmp_path, collator=None, **config):
    model, processor = tiny_llava(seed=1)
    processor.chat_template = TRAINING_TEMPLATE
    args = trl.SFTConfig(output_dir=str(tmp_path / policy), max_steps=3, per_device_train_batch_size=2,
                         learning_rate=1e-2, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
                         dataloader_num_workers=0, max_length=None, **config)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=processor, data_collator=collator)
    if collator is None and "label_smoothing_factor" in config:
        trainer.data_collator = PromptMaskCollator(trainer.data_collator)
    with fm.apply(model, policy):
        trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], processor


def _assert_answer_outside_prompt(layouts, processor):
    """Every training call: the supervised positions are exactly each row's answer, at its end."""
    img = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert layouts
    for inputs, layout in layouts:
        ids = inputs["input_ids"]
        for b in range(ids.shape[0]):
            valid = layout.valid[b].nonzero().flatten()
            answer = ids[b, layout.supervised[b]].tolist()
            text = processor.tokenizer.decode(answer, skip_special_tokens=True).strip()
            assert text in ANSWERS, text
            first = int(layout.supervised[b].nonzero()[0])
            assert layout.prompt[b, valid[0]:first].all() and not layout.prompt[b, first:].any()
            assert (ids[b, :first] == img).sum() == 16 and layout.visual[b, :first].sum() == 16


@pytest.mark.parametrize(("rows", "config"), [(_prompt_completion, {}), (_messages, {"assistant_only_loss": True})],
                         ids=["prompt-completion", "messages-assistant-only"])
def test_sft_trainer_under_mma_changes_the_loss_and_keeps_the_answer_out(rows, config, tmp_path, monkeypatch):
    causal, _ = _train("causal", rows(), tmp_path, **config)
    recorder = _Recorder(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="futuremask")  # the prompt region is not empty: no warning
        mma, processor = _train("mma", rows(), tmp_path, **config)
    assert len(causal) == len(mma) == 3
    assert max(abs(a - b) for a, b in zip(causal, mma, strict=True)) > 1e-4
    _assert_answer_outside_prompt(recorder.layouts, processor)


@pytest.mark.parametrize(("rows", "config"), [(_messages, {}), (_prompt_completion, {"completion_only_loss": False})],
                         ids=["messages-default", "completion-only-off"])
def test_sft_trainer_defaults_that_leave_no_prompt_warn(rows, config, tmp_path):
    with pytest.warns(UserWarning, match="no token can see anything more"):
        _train("future_v2t", rows(), tmp_path, **config)


def test_label_smoothing_needs_the_prompt_mask(tmp_path):
    """TRL calls the model without labels here: refused, unless the collator adds prompt_mask."""
    model, processor = tiny_llava(seed=1)
    args = trl.SFTConfig(output_dir=str(tmp_path / "ls"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                         save_strategy="no", use_cpu=True, max_length=None, label_smoothing_factor=0.1)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(_prompt_completion()),
                             processing_class=processor)
    with fm.apply(model, "mma"), pytest.raises(fm.MissingPromptError, match="prompt_mask"):
        trainer.train()
    losses, _ = _train("mma", _prompt_completion(), tmp_path, label_smoothing_factor=0.1)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


def test_prompt_mask_collator_marks_the_labelled_tokens():
    batch = {"input_ids": torch.arange(6).reshape(1, 6), "attention_mask": torch.tensor([[0, 1, 1, 1, 1, 1]]),
             "labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX, 5]])}
    out = PromptMaskCollator(lambda examples: dict(batch))([None])
    assert out["prompt_mask"].tolist() == [[False, True, True, False, True, False]]
    with pytest.raises(KeyError, match="labels"):
        PromptMaskCollator(lambda examples: {"input_ids": batch["input_ids"]})([None])


# --- evaluation and prediction loops ------------------------------------------------------------------


def _predict(policy, last_word, wrap):
    """TRL's predict() (the logits compute_metrics gets) on two rows whose answer ends in ``last_word``."""
    model, processor = tiny_llava(seed=1)
    rows = [{"prompt": "USER: <image> what is in the image ?\nASSISTANT:", "completion": " blue " + last_word,
             "images": [draw_image(i)]} for i in range(2)]
    args = trl.SFTConfig(output_dir="unused", per_device_eval_batch_size=2, report_to=[], use_cpu=True,
                         max_length=None, save_strategy="no")
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=processor)
    if wrap:
        trainer.data_collator = PromptMaskCollator(trainer.data_collator)
    with fm.apply(model, policy), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL: the logits of compute_metrics are deprecated
        out = trainer.predict(datasets.Dataset.from_list(rows))
    return torch.as_tensor(out.predictions).float(), torch.as_tensor(out.label_ids)


def test_prediction_loop_logits_stay_causal_in_the_answer():
    """TRL rebuilds compute_metrics' logits without labels: refused unless the batch carries prompt_mask,
    and then the logits before the last answer token do not depend on it (paired: before, they moved)."""
    with pytest.raises(fm.MissingPromptError, match="PromptMaskCollator"):
        _predict("mma", "circle", wrap=False)
    (circle, labels), (square, other) = _predict("mma", "circle", True), _predict("mma", "square", True)
    changed = int((labels[0] != other[0]).nonzero()[0])  # the last answer word
    assert changed > int((labels[0] != IGNORE_INDEX).nonzero()[0])  # it is not the first answer token
    torch.testing.assert_close(circle[:, :changed], square[:, :changed], rtol=0, atol=0)
    causal, _ = _predict("causal", "circle", wrap=False)
    assert (causal[:, :changed] - circle[:, :changed]).abs().max() > 1e-3  # mma did change the prompt's logits


# --- reference models ---------------------------------------------------------------------------------


def _dpo(tmp_path):
    model, processor = tiny_llava(seed=1)
    reference = trl.create_reference_model(model)  # a deepcopy: the same weights
    rows = [{"prompt": "USER: <image> what is in the image ?\nASSISTANT:", "chosen": " red",
             "rejected": " blue circle", "images": [draw_image(i)]} for i in range(2)]
    args = trl.DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
                         learning_rate=1e-3, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
                         max_length=None, dataloader_num_workers=0)
    trainer = trl.DPOTrainer(model=model, ref_model=reference, args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=processor)
    return trainer, model, reference


def test_dpo_reference_model_runs_the_same_policy(tmp_path):
    """Paired: with the policy on the trained model only, step 0 compared two models (loss 0.692, not ln 2)."""
    trainer, model, reference = _dpo(tmp_path)
    for one in (model, reference):
        with fm.apply(one, "mma"), pytest.raises(fm.hf_train.ReferencePolicyError, match="apply_to_trainer"):
            trainer.train()
    from futuremask.train import apply_to_trainer

    with apply_to_trainer(trainer, "mma", layers="0") as applied:
        assert [h.model for h in applied.handles] == [model, reference]
        assert all(h.layers == frozenset({0}) for h in applied.handles)
        trainer.train()
    assert not hasattr(model, "_futuremask") and not hasattr(reference, "_futuremask")
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0
