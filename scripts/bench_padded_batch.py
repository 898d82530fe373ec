"""One attention layer on a left-padded batch of 8 different prompts against the same prompts one at a time.

Each prompt: text, 576 image tokens, text, 576 image tokens, text (text lengths drawn with a fixed seed,
1,400-2,152 tokens in all), 12 heads x 64, CPU time; the plan (once per forward in a model, shared by every
layer) is timed apart. Prints, per policy, the 8 rows alone and the padded batch (best of 3). Run with
``OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/bench_padded_batch.py [POLICY ...]`` (BENCHMARKS.md,
"Eval throughput"; the *before* column ran the same script with PYTHONPATH at commit d8aaea2's src).
"""

from __future__ import annotations

import random
import sys
import time

import torch

from futuremask.kernels import blocked, sdpa_attention
from futuremask.kernels.rows import FutureRows
from futuremask.layout import TokenLayout
from futuremask.policies import overlay_mod, policy_mask

HEADS, HEAD_DIM, IMAGE = 12, 64, 576


def layout_of(texts: list[tuple[int, int, int]]) -> TokenLayout:
    """A left-padded batch: row ``b`` is text, image, text, image, text with ``texts[b]`` text lengths."""
    rows = [[False] * a + [True] * IMAGE + [False] * b + [True] * IMAGE + [False] * c for a, b, c in texts]
    length = max(map(len, rows))
    vis = torch.tensor([[False] * (length - len(r)) + r for r in rows])
    valid = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return TokenLayout.from_masks(vis, attention_mask=valid)


def time_layer(policy: str, layout: TokenLayout, repeats: int = 3) -> tuple[float, float]:
    """Best CPU seconds of (attention, plan) for one layer of ``layout`` under ``policy``."""
    shape = (layout.batch_size, HEADS, layout.length, HEAD_DIM)
    q, k, v = (torch.randn(shape) for _ in range(3))
    attn = plan = float("inf")
    for _ in range(repeats):
        base = None if bool(layout.valid.all()) else policy_mask("causal", layout)[:, None]
        overlay = overlay_mod(policy, layout)
        mask = base if overlay is None else FutureRows(overlay, base, layout.length, layout.batch_size)
        t0 = time.process_time()
        if mask is not None:
            blocked.cached_plan(mask)
        t1 = time.process_time()
        with torch.no_grad():
            sdpa_attention(q, k, v, mask)
        t2 = time.process_time()
        attn, plan = min(attn, t2 - t1), min(plan, t1 - t0)
    return attn, plan


def main(policies: list[str]) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    texts = [(rng.randint(100, 600), rng.randint(50, 300), rng.randint(50, 400)) for _ in range(8)]
    batch = layout_of(texts)
    for policy in policies:
        alone = [time_layer(policy, layout_of([t])) for t in texts]
        attn, plan = time_layer(policy, batch)
        print(f"{policy}: 8 rows alone attn {sum(a for a, _ in alone):.3f} s (plan {sum(p for _, p in alone):.3f}) | "
              f"padded batch of 8 ({batch.length} tokens) attn {attn:.3f} s (plan {plan:.3f})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["causal", "future", "future_v2v", "future_v2t", "mma"])
