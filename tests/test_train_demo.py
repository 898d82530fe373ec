"""The committed demo checkpoint: small, loads offline, and scores well above chance on the demo tasks."""

from __future__ import annotations

import json

import pytest

from futuremask.cli import main
from futuremask.eval.demo import DEMO_CHECKPOINT, DEMO_WORDS, load_demo_model

pytestmark = pytest.mark.skipif(not (DEMO_CHECKPOINT / "config.json").is_file(),
                                reason="no committed demo checkpoint")

# task -> (limit, metric, chance level, required score). Chance: 1 / number of choices (4 here) for the
# multiple-choice tasks; for DemoChange 0.5, above the ROUGE-L of the best constant "<side> <color>" answer
# on these 16 samples (0.41 for "left orange").
EXPECTED = {"DemoDirection": (16, "Accuracy", 0.25, 0.75), "DemoChange": (16, "Rouge-L f", 0.5, 0.75)}


def test_checkpoint_is_small_and_self_contained():
    files = [p for p in DEMO_CHECKPOINT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "futuremask_training.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only
    model, processor = load_demo_model()
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not model.training
    vocab = processor.tokenizer.get_vocab()
    assert all(w in vocab for w in DEMO_WORDS)
    record = json.loads((DEMO_CHECKPOINT / "futuremask_training.json").read_text())
    assert record["config"]["policy"] in ("causal", "mma", "future")


def test_demo_eval_scores_above_chance(tmp_path, capsys):
    for task, (limit, metric, chance, required) in EXPECTED.items():
        code = main(["eval", "--demo", "--limit", str(limit), "--tasks", task, "--policy", "causal",
                     "--output-dir", str(tmp_path), "--no-progress"])
        assert code == 0
        scores = [json.loads(p.read_text()) for p in tmp_path.glob(f"demo/*/{task}/eval.json")]
        assert len(scores) == 1
        score = scores[0][metric]
        assert score >= required > chance, (task, score)
