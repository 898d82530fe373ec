"""Library corners that used to mislead: the policy registry, deepcopy under a handle, verify's numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import encode

import futuremask as fm
import futuremask.policies as policies
from futuremask.cli import main


@pytest.fixture()
def registry(monkeypatch):
    """The policy registry, restored after the test."""
    monkeypatch.setattr(policies, "_REGISTRY", dict(policies._REGISTRY))
    monkeypatch.setattr(policies, "_ALIASES", dict(policies._ALIASES))


def test_registered_policies_are_listed_everywhere(registry):
    before = fm.POLICIES

    @fm.register_policy("text_sees_first_image", aliases=("tsfi",))
    def overlay(lay, b, q, kv):
        """Text queries also see the visual tokens of the prompt."""
        return ~lay.visual[b, q] & lay.visual[b, kv] & lay.prompt[b, kv]

    assert fm.POLICIES == (*before, "text_sees_first_image")
    assert policies.POLICIES == fm.POLICIES
    from futuremask import POLICIES

    assert POLICIES == fm.POLICIES and fm.get_policy("tsfi").name == "text_sees_first_image"


def test_register_policy_errors_name_the_problem(registry):
    def undocumented(lay, b, q, kv):
        return lay.visual[b, q]

    with pytest.raises(ValueError, match=r"policy 'mine': 'undocumented' has no docstring; give it one"):
        fm.register_policy("mine")(undocumented)
    assert "mine" not in fm.POLICIES
    with pytest.raises(ValueError, match="policy name 'future' is already registered"):  # not hidden by the docstring
        fm.register_policy("future")(undocumented)
    with pytest.raises(ValueError, match="policy name 'original' is already registered"):
        fm.register_policy("new_one", aliases=("original",))(undocumented)


def test_deepcopy_under_a_handle_is_a_plain_model(llava, prompts):
    model, processor = llava
    batch = encode(processor, [prompts["two_images"][0]], [2])
    with torch.no_grad():
        stock = model(**batch).logits
    with fm.apply(model, "future") as handle, torch.no_grad():
        under = model(**batch).logits
        twin = copy.deepcopy(model)
        assert model._futuremask is handle  # the original keeps its policy
        again = model(**batch).logits
        plain = twin(**batch).logits
    assert not torch.equal(under, stock)  # the policy changes this prompt's logits
    assert torch.equal(again, under)
    assert torch.equal(plain, stock)  # the copy runs the stock model
    assert not hasattr(twin, "_futuremask") and not twin._forward_pre_hooks and not twin._forward_hooks
    assert "prepare_inputs_for_generation" not in vars(twin) and "__deepcopy__" not in vars(twin)
    assert twin.config.text_config._attn_implementation == model.config.text_config._attn_implementation
    assert not hasattr(model, "_futuremask")  # leaving the block removed the policy from the original
    with fm.apply(twin, "mma"):  # the copy takes a policy of its own
        pass


@pytest.mark.parametrize("settings", [{"layers": "0"}, {"merge": "lse", "layers": [1]}], ids=["layers", "merge"])
def test_deepcopy_keeps_the_originals_schedule_and_merge(llava, prompts, settings):
    """Paired with the old copy, which re-applied the policy without its layers: every layer changed."""
    model, processor = llava
    batch = encode(processor, [prompts["two_images"][0]], [2])
    with fm.apply(model, "future", **settings) as handle, torch.no_grad():
        before, shown = model(**batch).logits, repr(handle)
        hooks = list(model._forward_pre_hooks)
        twin = copy.deepcopy(model)
        after = model(**batch).logits
        assert repr(handle) == shown and list(model._forward_pre_hooks) == hooks and model._futuremask is handle
        plain = twin(**batch).logits
    with torch.no_grad():
        stock = model(**batch).logits
    assert torch.equal(after, before) and not torch.equal(before, stock)
    assert torch.equal(plain, stock) and not hasattr(twin, "_futuremask")


def test_deepcopy_of_a_peft_wrapper_is_a_plain_wrapper(llava, prompts):
    """The copy of a PeftModel under a handle is a PeftModel (not its base model) without the policy;
    the original wrapper keeps its hooks, its guard and its policy."""
    peft = pytest.importorskip("peft")
    from futuremask.tiny import tiny_llava

    base, processor = tiny_llava(seed=0)
    wrapper = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.0))
    batch = encode(processor, [prompts["two_images"][0]], [2])
    with fm.apply(wrapper, "mma") as handle, torch.no_grad():
        before = wrapper(**batch).logits
        twin = copy.deepcopy(wrapper)
        assert type(twin) is type(wrapper) and handle.wrapper is wrapper and wrapper._futuremask is handle
        assert torch.equal(wrapper(**batch).logits, before)
        with pytest.raises(RuntimeError, match="merge_and_unload"):
            wrapper.merge_and_unload()
        assert not hasattr(twin, "_futuremask") and not twin._forward_pre_hooks
        copied = twin(**batch).logits
    with torch.no_grad():
        stock = wrapper(**batch).logits
    assert torch.equal(copied, stock) and not torch.equal(before, stock)
    twin.merge_and_unload()  # the copy is not guarded


@pytest.mark.parametrize("args,message", [
    (["--atol", "-1"], "--atol must be a finite number >= 0 (a relative tolerance), got -1.0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1 (greedy steps compared), got 0"),
    (["--model", "/no/such/ckpt"], "--model /no/such/ckpt: no such folder"),
])
def test_verify_refuses_bad_numbers_before_loading(args, message, capsys, monkeypatch):
    import futuremask.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "load_processor", lambda *a: pytest.fail("the checkpoint was loaded"))
    assert main(["verify", "--model", "org/model", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_verify_cuda_without_cuda(capsys, monkeypatch, tmp_path):
    import futuremask.checkpoint as checkpoint

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(checkpoint, "load_processor", lambda *a: pytest.fail("the checkpoint was loaded"))
    assert main(["verify", "--model", "org/model", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err


def test_unwritable_outputs_fail_with_one_line(tmp_path, capsys, monkeypatch):
    """show-mask, report and score check their output folders first (here a read-only one: /proc)."""
    assert main(["show-mask", "--output", "/proc/masks.png"]) == 2
    assert "--output /proc: cannot write in /proc" in capsys.readouterr().err
    run = tmp_path / "run"
    (run / "T").mkdir(parents=True)
    (run / "result.json").write_text('{"run": {"Other": {"T": {"Accuracy": 0.5}}}}')
    assert main(["report", str(tmp_path), "--output", "/proc/report.md"]) == 2
    assert "--output /proc: cannot write in /proc" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--plot", "/proc/report.png"]) == 2
    assert "--plot /proc: cannot write in /proc" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    import futuremask.io as fmio

    real = fmio.tempfile.mkstemp

    def read_only(*a, dir=None, **k):  # root writes anywhere: simulate a read-only run folder
        if dir is not None and str(dir) == str(run):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(fmio.tempfile, "mkstemp", read_only)
    assert main(["score", "--data-dir", str(tmp_path), "--result-dir", str(run)]) == 2
    assert f"--result-dir {run}: cannot write in {run} (Permission denied); choose a writable --result-dir" in \
        capsys.readouterr().err


@pytest.mark.parametrize("which", ["tiny", "demo"])
def test_chat_template_renders_a_plain_string_like_a_text_part(which):
    from futuremask.eval.demo import load_demo_model
    from futuremask.tiny import tiny_llava

    _, processor = tiny_llava() if which == "tiny" else load_demo_model()
    question = "what is the color ?"
    texts = [processor.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                           tokenize=False)
             for c in (question, [{"type": "text", "text": question}])]
    tokens = [processor.tokenizer.tokenize(t) for t in texts]
    assert tokens[0] == tokens[1] == ["USER:", "what", "is", "the", "color", "?", "ASSISTANT:"]
