"""``futuremask verify``: passes on a saved tiny checkpoint, fails with the right line when the mask is broken."""

from __future__ import annotations

import re

import pytest
import torch

from futuremask import layout, policies
from futuremask.checkpoint import DEFAULT_PROMPT, load_checkpoint, prompt_text
from futuremask.cli import main
from futuremask.policies import Policy
from futuremask.tiny import tiny_llava
from futuremask.verify import CHECKS, verify

QUICK = ["future", "mma"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny LLaVA saved like a user's checkpoint (model + processor)."""
    path = tmp_path_factory.mktemp("tiny_llava")
    model, processor = tiny_llava()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_checkpoint(ckpt, device="cpu")


def _table_line(text: str, title: str, policy: str) -> str:
    lines = [line for line in text.splitlines() if re.match(rf"{re.escape(title)}\s+{re.escape(policy)}\s", line)]
    assert len(lines) == 1, text
    return lines[0]


def test_verify_passes_on_the_tiny_checkpoint(loaded):
    model, processor = loaded
    results = verify(model, processor, QUICK + ["original"], progress=False)
    got = {(r.check, r.policy): r.status for r in results}
    expected = {("causal", "causal"): "pass"}
    for policy in ("causal", "future", "mma"):
        for check in ("generate", "text-causal", "continuation", "batch"):
            expected[(check, policy)] = "pass"
    expected[("text-causal", "mma")] = "skip"  # mma's text queries see later visual tokens by design
    assert got == expected
    assert all(r.max_diff <= r.tolerance for r in results if r.status == "pass")
    assert getattr(model, "_futuremask", None) is None


def test_verify_cli_passes_and_prints_the_table(ckpt, capsys):
    assert main(["verify", "--model", ckpt, "--policy", "future_v2v", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    for title in CHECKS.values():
        assert "PASS" in _table_line(out, title, "causal")
    assert "PASS" in _table_line(out, CHECKS["text-causal"], "future_v2v")
    assert out.rstrip().endswith("9/9 checks passed")


def _text_sees_future(lay, b, q, kv):
    """Broken 'future': every query (text included) sees the whole prompt."""
    return lay.prompt[b, kv]


def _visual_sees_continuation(lay, b, q, kv):
    """Broken 'future': visual queries see every valid key, the scored continuation included."""
    return lay.visual[b, q] & lay.valid[b, kv]


def test_verify_fails_when_text_sees_the_future(ckpt, loaded, monkeypatch, capsys):
    monkeypatch.setitem(policies._REGISTRY, "future", Policy("future", _text_sees_future, "broken"))
    model, processor = loaded
    results = verify(model, processor, ["future"], progress=False)
    failed = [(r.check, r.policy) for r in results if not r.passed]
    assert failed == [("text-causal", "future")]
    assert main(["verify", "--model", ckpt, "--policy", "future"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in _table_line(out, CHECKS["text-causal"], "future")
    assert "PASS" in _table_line(out, CHECKS["continuation"], "future")
    assert out.rstrip().endswith("8/9 checks passed, 1 FAILED")


def test_verify_fails_when_the_continuation_leaks(loaded, monkeypatch):
    monkeypatch.setitem(policies._REGISTRY, "future", Policy("future", _visual_sees_continuation, "broken"))
    # and a broken segment rule (one segment per row): the central segment check would stop the leak otherwise
    monkeypatch.setattr(layout, "segments", lambda supervised, sequence: torch.ones_like(sequence))
    model, processor = loaded
    results = verify(model, processor, ["future"], progress=False)
    failed = [(r.check, r.policy) for r in results if not r.passed]
    assert failed == [("continuation", "future")]


@pytest.mark.parametrize("kind", ["lse", "kernel"])
def test_verify_with_merge_passes(loaded, kind):
    model, processor = loaded
    results = verify(model, processor, ["future_v2v"], merge=kind, progress=False)
    assert {r.policy for r in results} == {"causal", f"future_v2v+{kind}"}
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_plain_prompt_without_chat_template(tmp_path):
    model, processor = tiny_llava()
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, processor = load_checkpoint(str(tmp_path), device="cpu")
    assert prompt_text(processor) == f"<image> {DEFAULT_PROMPT}"
    results = verify(model, processor, ["future"], progress=False)
    assert all(r.passed for r in results)


def test_checkpoint_without_processor_is_a_clear_error(tmp_path, capsys):
    model, _ = tiny_llava()
    model.save_pretrained(tmp_path)
    assert main(["verify", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not load a processor" in err and "processor.save_pretrained" in err


class _WordProcessor:
    """Just enough of a processor for verify: plain prompts, ``<image>`` words -> :func:`families.build_batch`."""

    chat_template = None
    image_token = "<image>"
    image_processor = "stands in for an image processor"

    def __init__(self, vlm):
        self.vlm = vlm
        self.tokenizer = vlm.tokenizer
        self.tokenizer.chat_template = None  # a checkpoint without a chat template: verify writes a plain prompt

    def __call__(self, images, text, padding=False, return_tensors="pt"):
        from families import IMAGE, build_batch
        from transformers import BatchFeature

        vocab = self.tokenizer.get_vocab()
        prompts = [[IMAGE if w == "<image>" else w for w in t.split() if w == "<image>" or w in vocab] for t in text]
        return BatchFeature(build_batch(self.vlm, prompts, seeds=[0] * len(prompts)))


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "internvl"])
def test_verify_passes_on_every_tiny_family(family):
    from families import FAMILIES

    vlm = FAMILIES[family]()
    results = verify(vlm.model, _WordProcessor(vlm), ["future"], progress=False)
    assert len(results) == 9
    assert all(r.status == "pass" for r in results), [r for r in results if r.status != "pass"]
