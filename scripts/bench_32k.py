"""A 32,768-token prompt on a tiny-width LLaVA: the largest tensor any aten op returns, per policy.

Issue 15's memory target: the prompt pass of every sdpa policy and merge holds no tensor of ``L x L``
elements. One forward per variant under a ``TorchDispatchMode`` that records the largest output; prints
its size as a share of ``L x L`` and the CPU time of the forward. BENCHMARKS.md has the figures.

    PYTHONPATH=src .venv/bin/python scripts/bench_32k.py
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import futuremask as fm
from futuremask.bench import PromptShape, SyntheticSize, synthetic_llava, synthetic_prompt

VARIANTS = [("causal", None), ("future", None), ("mma", None), ("future_v2v", None), ("future", "kernel"),
            ("mma", "lse")]


class LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def main() -> None:
    torch.set_num_threads(1)
    size = SyntheticSize(hidden=32, layers=2, heads=4, kv_heads=2, vocab=64, max_positions=32768)
    model = synthetic_llava(size)
    inputs = synthetic_prompt(model.config, PromptShape(2, 8192, 16384, 1))  # 2 images x 8192 + 16384 text
    length = inputs["input_ids"].shape[1]
    for policy, merge in VARIANTS:
        watch = LargestOutput()
        start = time.process_time()
        with fm.apply(model, policy, merge=merge), torch.no_grad(), watch:
            model(**inputs, use_cache=False, logits_to_keep=1)
        name = policy + (f"+{merge}" if merge else "")
        print(f"{name}: L={length} largest tensor {watch.largest:,} elements "
              f"({watch.largest / length**2:.4f} of L x L), {time.process_time() - start:.1f} s CPU", flush=True)


if __name__ == "__main__":
    main()
