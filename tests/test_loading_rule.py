"""One dtype/device rule for every command that loads a checkpoint (eval, verify, attention-map, bench)."""

import types

import pytest
import torch

from futuremask import checkpoint


def test_auto_device_is_the_process_gpu_or_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert checkpoint.resolve_device(None) == checkpoint.resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert checkpoint.resolve_device("auto") == "cuda:1"  # one GPU per launched process
    assert checkpoint.resolve_device("cpu") == "cpu"


def test_auto_dtype_is_the_checkpoints_on_cuda_and_float32_elsewhere():
    assert checkpoint.resolve_dtype("auto", "cuda:0") == "auto"
    assert checkpoint.resolve_dtype("auto", "cpu") is torch.float32
    assert checkpoint.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        checkpoint.resolve_dtype("int8", "cpu")


def test_every_loader_goes_through_the_rule(monkeypatch, tmp_path):
    """eval's and bench's loaders reach checkpoint.load_model with the command's dtype and device."""
    from futuremask.bench import api
    from futuremask.cli import eval as cli_eval

    calls = []

    def fake_load(*args, **kwargs):
        calls.append((args, kwargs))
        model = torch.nn.Linear(1, 1)
        model.generation_config = types.SimpleNamespace(eos_token_id=2)
        return model

    monkeypatch.setattr(checkpoint, "load_processor", lambda path: "processor")
    monkeypatch.setattr(checkpoint, "check_model_source", lambda path: None)
    monkeypatch.setattr(checkpoint, "load_model", fake_load)
    monkeypatch.setattr(api, "load_checkpoint_model", fake_load)
    assert cli_eval.load_model("some/vlm", "auto", "cpu")[1] == "processor"
    model = api.load_model("other/vlm", dtype="float16", device="cpu")
    assert model.weight.dtype is torch.float16 and model.generation_config.eos_token_id is None
    assert calls == [(("some/vlm",), {"dtype": "auto", "device": "cpu", "flag": "--model"}),
                     (("other/vlm",), {"dtype": "float16", "device": "cpu"})]
