"""Training under a policy with Hugging Face Trainer, the checkpoint it saves, and the ``train`` command."""

from __future__ import annotations

import json

import torch
from PIL import Image

import futuremask as fm
from futuremask.cli import main
from futuremask.tiny import tiny_llava
from futuremask.train.collator import SFTCollator
from futuremask.train.trainer import TrainConfig, train

COLORS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230), "yellow": (240, 220, 20)}


def _examples(n: int = 8):
    names = list(COLORS)
    out = []
    for i in range(n):
        a, b = names[i % 4], names[(i + 1 + i // 4) % 4]
        k = 1 + i % 2
        out.append({
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": f"what color is image {k} ?"}],
            "images": [Image.new("RGB", (32, 32), COLORS[a]), Image.new("RGB", (32, 32), COLORS[b])],
            "answer": (a, b)[k - 1],
        })
    return out


def _loss(model, batch, policy: str) -> float:
    with fm.apply(model, policy), torch.no_grad():
        return model(**batch).loss.item()


def test_a_few_steps_under_mma_reduce_the_loss(tmp_path):
    model, proc = tiny_llava(seed=11)
    examples = _examples()
    batch = SFTCollator(proc)(examples)
    before = _loss(model, batch, "mma")
    config = TrainConfig(policy="mma", steps=8, batch_size=8, learning_rate=3e-3, warmup_steps=0, log_every=2)
    result = train(model, proc, examples, config, output_dir=tmp_path / "ckpt")
    after = _loss(model, batch, "mma")
    assert after < 0.7 * before, (before, after)
    assert len(result.losses) == 4 and result.losses[-1][1] < result.losses[0][1]
    assert getattr(model, "_futuremask", None) is None  # the policy was removed after training
    # the checkpoint reloads to the same model, and records how it was trained
    from transformers import AutoModelForImageTextToText, AutoProcessor

    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "ckpt").eval()
    proc2 = AutoProcessor.from_pretrained(tmp_path / "ckpt")
    batch2 = SFTCollator(proc2)(examples)
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    assert abs(_loss(again, batch2, "mma") - after) < 1e-5
    record = json.loads((tmp_path / "ckpt" / "futuremask_training.json").read_text())
    assert record["config"]["policy"] == "mma" and record["config"]["steps"] == 8


def test_training_policy_changes_the_update():
    """Same init, data and steps: mma and causal training end with different weights (the mask was active)."""
    weights = {}
    for policy in ("causal", "mma"):
        model, proc = tiny_llava(seed=12)
        train(model, proc, _examples(4), TrainConfig(policy=policy, steps=2, batch_size=4, warmup_steps=0))
        weights[policy] = model.model.multi_modal_projector.linear_1.weight.detach().clone()
    again, proc = tiny_llava(seed=12)
    train(again, proc, _examples(4), TrainConfig(policy="causal", steps=2, batch_size=4, warmup_steps=0))
    assert torch.equal(again.model.multi_modal_projector.linear_1.weight, weights["causal"])  # deterministic
    assert not torch.allclose(weights["causal"], weights["mma"])


def test_train_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--demo", "--demo-samples", "3", "--steps", "2", "--batch-size", "4", "--policy", "original",
                 "--hidden-size", "32", "--num-layers", "1", "--vision-hidden-size", "16", "--output-dir", str(out)])
    assert code == 0
    record = json.loads((out / "futuremask_training.json").read_text())
    assert record["config"]["policy"] == "causal"  # the alias, resolved
    step, loss = record["losses"][-1]  # fewer steps than the logging interval: the loss is still logged
    assert step == 2 and loss == loss
    assert "trained under 'causal' for 2 steps in" in (printed := capsys.readouterr().out)
    assert f"(loss {loss:.4f} at step 2)" in printed and "nan" not in printed
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    from futuremask.eval.demo import load_demo_model

    model, proc = load_demo_model(out)
    assert model.config.text_config.hidden_size == 32 and proc.tokenizer.convert_tokens_to_ids("circles") != 1


def test_train_command_checks_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    base = ["train", "--demo", "--demo-samples", "3", "--steps", "1", "--hidden-size", "32", "--num-layers", "1"]
    cases = [
        (["--output-dir", str(tmp_path / "file" / "out")],
         f"--output-dir {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file"),
        (["--model", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o")],
         f"--model {tmp_path / 'nope'}: no such folder"),
        (["--steps", "0", "--output-dir", str(tmp_path / "o")], "--steps must be a positive integer, got 0"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing trained, nothing written
