"""The plugin in-process: registry, model arguments, errors that surface, sampling, the 0.7.3 work-around."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import reference
import torch
from conftest import DEMO
from lmms_eval import models
from lmms_eval.api.instance import Instance, unwrap_generation_output
from PIL import Image

import futuremask as fm
from futuremask.integrations.lmms_eval import messages, options
from futuremask.integrations.lmms_eval.model import FutureMaskChat, FutureMaskSimple, Scored


def test_the_entry_point_registers_both_classes():
    assert models.get_model("futuremask") is FutureMaskChat
    assert models.get_model("futuremask", force_simple=True) is FutureMaskSimple


@pytest.mark.parametrize(("arg_string", "cli", "message"), [
    ("pretrained=/nowhere,polcy=future", {}, "unknown model_args polcy; the keys are: pretrained, policy"),
    ("pretrained=/nowhere,policy=futur", {}, "unknown mask policy 'futur'"),
    ("pretrained=/nowhere,merge=sum", {}, "unknown merge kind 'sum'"),
    ("pretrained=/nowhere,merge_kernel=5", {}, "merge_kernel need a merge"),
    ("pretrained=/nowhere,batch_size=0", {}, "batch_size must be an integer >= 1"),
    ("pretrained=/nowhere,dtype=fp8", {}, "unknown dtype 'fp8'"),
    ("pretrained=/nowhere,backend=flash", {}, "unknown backend 'flash'"),
    ("pretrained=/nowhere,layers=0-x", {}, "join several ranges with + (layers=0-7+12)"),
    ("policy=future", {}, "needs pretrained=ID_OR_PATH"),
    ("pretrained=/nowhere,batch_size=4", {"batch_size": "2"}, "batch_size is 4 in --model_args but '2'"),
    ("pretrained=/nowhere", {"batch_size": "auto"}, "--batch_size auto is not supported"),
    ("pretrained=/nowhere,policy=mma,layers=0-1,3", {}, "part '3' is not key=value: commas separate model_args, so "
                                                       "join several layer ranges with + (layers=0-7+12)"),
    ("pretrained=/nowhere,policy=mma,layers=-1", {}, "layers '-1': expected indices"),  # not '-1.0'
    ("pretrained=/nowhere,policy=causal,layers=0-1", {}, "layers=0-1 with policy=causal does nothing"),
    ("pretrained=/nowhere,layers=0+1", {}, "with policy=causal does nothing"),
])
def test_bad_model_args_fail_before_loading(arg_string, cli, message):
    with pytest.raises(ValueError, match="futuremask: ") as err:
        FutureMaskChat.create_from_arg_string(arg_string, cli)
    assert message in str(err.value)


def test_model_args_accept_aliases_merge_settings_and_lmms_eval_defaults():
    args = options.parse(options.combine(
        {"pretrained": "x", "policy": "original", "merge": "kernel", "merge_kernel": 5, "merge_pool": "mean"},
        {"batch_size": 1, "device": None, "max_batch_size": None}))
    assert (args.policy, args.merge, args.batch_size) == ("causal", fm.Merge("kernel", kernel=5, pool="mean"), 1)
    assert options.parse(options.combine({"pretrained": "x"}, {"batch_size": "3"})).batch_size == 3
    # lmms-eval turns a bare number into an int; + joins ranges (commas cut --model_args)
    assert [options.parse({"pretrained": "x", "policy": "mma", "layers": v}).layers
            for v in (2, "3+0-2", "all", None)] == [
        "2", "0-3", None, None]


def test_model_args_keep_their_text():
    assert options.split("pretrained=/a/b, policy=mma,layers=-1,batch_size=2,") == {
        "pretrained": "/a/b", "policy": "mma", "layers": "-1", "batch_size": "2"}


def test_a_loglikelihood_continuation_is_the_doc_to_target_of_its_document():
    """output_type loglikelihood sends doc_to_target itself (the plugin concatenated the method and crashed)."""
    from futuremask.integrations.lmms_eval.model import _continuation

    doc = {"answer": "red", "label": 0}
    assert _continuation(lambda d: " " + d["answer"], doc, "t") == " red"
    assert _continuation(" blue", doc, "t") == " blue"  # multiple_choice sends the text
    with pytest.raises(ValueError, match="task 't': a loglikelihood continuation must be text, but doc_to_target gave int 0"):
        _continuation(lambda d: d["label"], doc, "t")


def test_a_schedule_beyond_the_models_layers_is_refused_before_any_request():
    with pytest.raises(ValueError, match=r"futuremask: layers \[4, 5\] do not exist.*model_args layers="):
        FutureMaskChat.create_from_arg_string(f"pretrained={DEMO},policy=mma,layers=2-5")


def test_batches_share_gen_kwargs_and_cut_across_image_counts():
    """A batch holds one gen_kwargs group, ordered by image count: only each group's last batch is short."""
    lm = SimpleNamespace(batch_size=2)
    assert FutureMaskChat._batches(lm, ["a", "b", "a", "a", "b", "a"], [2, 1, 1, 2, 2, 1]) == [[2, 5], [0, 3], [1, 4]]
    assert FutureMaskChat._batches(lm, [None] * 5, [1, 2, 1, 2, 1]) == [[0, 2], [4, 1], [3]]


def test_generation_settings():
    kwargs, until = messages.generation({"until": "\n", "temperature": 0, "do_sample": True, "top_p": 0.5})
    assert kwargs == {"max_new_tokens": 1024, "num_beams": 1, "do_sample": False} and until == ["\n"]
    kwargs, until = messages.generation({"max_new_tokens": 3, "temperature": 0.7, "top_p": 0.9})
    assert kwargs == {"max_new_tokens": 3, "num_beams": 1, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert until == [] and messages.cut("a b. c? d", [".", "?"]) == "a b"


def test_scored_passes_lmms_eval_0_7_3_unwrap_intact():
    """unwrap_generation_output stringifies a plain (float, bool) tuple (the 0.7.3 bug); Scored survives it."""
    assert unwrap_generation_output((1.5, True))[0] == "(1.5, True)"
    text, _ = unwrap_generation_output(Scored(1.5, True))
    assert text == (1.5, True) and tuple(Scored(1.5, True)) == (1.5, True)


@pytest.fixture(scope="module")
def chat():
    lm = FutureMaskChat.create_from_arg_string(f"pretrained={DEMO},policy=mma,batch_size=2")
    lm.task_dict = {}
    return lm


def _request(lm, doc, doc_to_messages, gen_kwargs, task="t", request_type="generate_until"):
    lm.task_dict.setdefault(task, {"test": {}})["test"][0] = doc
    return Instance(request_type=request_type, arguments=("ctx", doc_to_messages, gen_kwargs, 0, task, "test"),
                    idx=0, metadata={"task": task, "doc_id": 0, "repeats": 1})


def test_errors_surface_instead_of_empty_answers(chat, tmp_path):
    video = _request(chat, {}, lambda d: [{"role": "user", "content": [{"type": "video", "url": "v.mp4"}]}], {})
    with pytest.raises(ValueError, match="'video' inputs are not supported"):
        chat.generate_until([video])
    missing = _request(chat, {}, lambda d: [{"role": "user", "content": [
        {"type": "image", "url": str(tmp_path / "none.png")}, {"type": "text", "text": "what color is it ?"}]}], {})
    with pytest.raises(ValueError, match="cannot read image"):
        chat.generate_until([missing])

    def split(doc):
        raise fm.PromptSplitError("raised inside the task")

    with pytest.raises(fm.PromptSplitError):
        chat.generate_until([_request(chat, {}, split, {})])
    with pytest.raises(NotImplementedError, match="multi-round"):
        chat.generate_until_multi_round([])
    with pytest.raises(NotImplementedError, match="--force_simple"):
        chat.loglikelihood([])


def test_sampling_with_temperature_equals_apply_generate_with_the_same_seed(chat, tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(path)
    doc = {"images": [str(path)], "question": "what color is it ?"}
    to_messages = lambda d: [{"role": "user", "content": [  # noqa: E731
        {"type": "text", "text": "image 1 :"}, {"type": "image", "url": Image.open(path)},
        {"type": "text", "text": d["question"]}]}]
    gen_kwargs = {"max_new_tokens": 6, "temperature": 1.5}
    torch.manual_seed(7)
    got = chat.generate_until([_request(chat, doc, to_messages, gen_kwargs)])
    model, processor = reference.load(DEMO)
    batch = reference.inputs(processor, doc, interleaved=True)
    torch.manual_seed(7)
    with fm.apply(model, "mma"), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=True, temperature=1.5, num_beams=1)
    assert got == processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    torch.manual_seed(8)
    others = {chat.generate_until([_request(chat, doc, to_messages, gen_kwargs)])[0] for _ in range(4)}
    assert len(others | set(got)) > 1  # it does sample
