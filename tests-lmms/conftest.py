"""One real ``lmms-eval`` launch for the whole suite: several configurations in one ``--config`` file.

lmms-eval exits 0 even when a configuration fails, so the tests read what each configuration wrote
(the per-sample JSONL and results JSON under its ``output_path``) and the launch's log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

try:
    import lmms_eval  # noqa: F401
except ImportError as err:  # fail, never skip: this suite exists to test the plugin against lmms-eval
    raise RuntimeError("tests-lmms needs lmms-eval: run bash scripts/test-lmms.sh (it sets up .venv-lmms/)") from err

import localtask

torch.set_num_threads(1)
DEMO = str(Path(__file__).resolve().parents[1] / "src" / "futuremask" / "assets" / "demo-vlm")
TIMEOUT_S = 900


@dataclass(frozen=True)
class Config:
    """One lmms-eval run: model checkpoint, model args, tasks, whether --force_simple."""

    name: str
    pretrained: str
    policy: str
    tasks: tuple[str, ...]
    simple: bool = False
    merge: str = "none"
    batch_size: int = 1
    layers: str | None = None  # as given in --model_args (ranges joined with +)


def configs(tiny_dir: str) -> list[Config]:
    return [
        Config("chat_future_b1", DEMO, "future", ("fm_gen",), batch_size=1),
        Config("chat_future_b4", DEMO, "future", ("fm_gen",), batch_size=4),
        Config("simple_mma_b4", DEMO, "mma", ("fm_gen", "fm_mc", "fm_ll"), simple=True, batch_size=4),
        Config("simple_mma_layers_b4", DEMO, "mma", ("fm_gen", "fm_mc"), simple=True, batch_size=4, layers="0+2-3"),
        Config("simple_v2v_kernel_b3", tiny_dir, "future_v2v", ("fm_gen", "fm_mc"), simple=True, merge="kernel",
               batch_size=3),
        Config("chat_bad_policy", DEMO, "nonsense", ("fm_gen",)),
    ]


@dataclass
class Launch:
    """What the launch left: the folder, the docs, the configurations and the combined log."""

    root: Path
    docs: list[dict]
    configs: dict[str, Config]
    log: str
    returncode: int

    def samples(self, config: str, task: str) -> dict[int, dict]:
        """The logged samples of ``task`` under ``config``, by doc_id (fails if there are none)."""
        files = sorted((self.root / "out" / config).glob(f"*/*_samples_{task}.jsonl"))
        assert files, f"{config}: lmms-eval wrote no samples for {task}; log tail:\n{self.log[-3000:]}"
        rows = [json.loads(line) for line in files[-1].read_text().splitlines()]
        return {int(r["doc_id"]): r for r in rows}

    def results(self, config: str) -> dict:
        files = sorted((self.root / "out" / config).glob("*/*_results.json"))
        assert files, f"{config}: lmms-eval wrote no results; log tail:\n{self.log[-3000:]}"
        return json.loads(files[-1].read_text())


def _entry(config: Config, root: Path) -> dict:
    model_args = f"pretrained={config.pretrained},policy={config.policy},merge={config.merge}"
    model_args += f",layers={config.layers}" if config.layers else ""
    entry = {"model": "futuremask", "model_args": model_args, "tasks": ",".join(config.tasks),
             "include_path": str(root / "task"), "log_samples": True, "output_path": str(root / "out" / config.name),
             "batch_size": config.batch_size}  # lmms-eval's own --batch_size, folded into the model args
    if config.simple:
        entry["force_simple"] = True
    return entry


@pytest.fixture(scope="session")
def launch(tmp_path_factory) -> Launch:
    from futuremask.tiny import tiny_llava

    root = tmp_path_factory.mktemp("lmms")
    docs = localtask.write(root / "task")
    tiny_dir = root / "tiny-ckpt"
    model, processor = tiny_llava(seed=3)
    model.save_pretrained(tiny_dir)
    processor.save_pretrained(tiny_dir)
    runs = configs(str(tiny_dir))
    (root / "runs.yaml").write_text(yaml.safe_dump([_entry(c, root) for c in runs]))
    exe = Path(sys.executable).with_name("lmms-eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(exe), "--config", str(root / "runs.yaml")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    log = proc.stdout + proc.stderr
    (root / "lmms-eval.log").write_text(log)
    return Launch(root=root, docs=docs, configs={c.name: c for c in runs}, log=log, returncode=proc.returncode)
