"""One merge attention call on a small pass: the whole-pass path against the run path and plain SDPA.

A batch of prompts of the demo's size (4 heads over 2 key/value heads, head size 32; an image of
``span`` tokens every ``span + 10`` positions, ``future`` policy), CPU time per call (best of 3 rounds of
20 calls, after a warm-up); the per-forward work (the runs, the gathered rows) is memoised across
calls as it is across layers. Run with
``OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/bench_merge_small.py [BATCH LENGTH [SPAN]]``
(BENCHMARKS.md, "Merge eval throughput: the whole-pass path").
"""

from __future__ import annotations

import sys
import time

import torch

from futuremask import Merge, build_mask
from futuremask.kernels import merge as merge_kernel
from futuremask.kernels import merge_dense
from futuremask.layout import TokenLayout

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32


def per_call_ms(fn, calls: int = 20, rounds: int = 3) -> float:
    """Best CPU milliseconds per call of ``fn`` over ``rounds`` of ``calls`` calls."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls * 1e3)
    return best


def main(batch: int = 8, length: int = 116, span: int = 30) -> None:
    torch.manual_seed(0)
    vis = torch.zeros(batch, length, dtype=torch.bool)
    for start in range(5, length - 20, span + 10):
        vis[:, start : start + span] = True
    layout = TokenLayout.from_masks(vis)
    base = build_mask("causal", vis)
    future = build_mask("future", vis) & ~base
    q = torch.randn(batch, HEADS, length, HEAD_DIM)
    k, v = (torch.randn(batch, KV_HEADS, length, HEAD_DIM) for _ in range(2))
    rows = merge_kernel._DenseRows(future[:, None], None)  # one pass's future keys, memoised across calls
    sdpa = per_call_ms(lambda: merge_kernel.sdpa_attention(q, k, v, None))
    print(f"batch {batch}, {length} tokens, {int(vis[0].sum())} visual; sdpa (causal) {sdpa:.2f} ms")
    print("| merge | sdpa ms | whole pass ms | x sdpa | run path ms | x sdpa |")
    print("|---|---|---|---|---|---|")
    limit, sinks, ends = merge_dense.DENSE_BYTES, layout.sequence_sinks(1), layout.segment_end
    for kind in ("lse", "kernel"):
        merge = Merge(kind)

        def call(merge=merge):
            return merge_kernel.merge_attention(q, k, v, None, rows, merge=merge, prefix_positions=sinks,
                                                prompt_end=ends)

        merge_dense.DENSE_BYTES = 2**40
        whole = per_call_ms(call)
        merge_dense.DENSE_BYTES = 0
        runs = per_call_ms(call)
        merge_dense.DENSE_BYTES = limit
        print(f"| {kind} | {sdpa:.2f} | {whole:.2f} | {whole / sdpa:.2f} | {runs:.2f} | {runs / sdpa:.2f} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*(int(a) for a in sys.argv[1:]))
