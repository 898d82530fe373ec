"""``futuremask bench --against dense-mask``: fm.apply's prompt pass against what a user would do by hand.

By hand, a policy is the unmodified model given a dense 4-D mask: ``fm.build_mask(...)[:, None]`` as
``attention_mask`` (transformers' SDPA then converts it to float and scores every pair). For each
policy, one round times both, interleaved, on the same prompt: ``apply_ms`` (``fm.apply`` + the
forward) and ``dense_ms`` (building the mask + the forward); ``ratio`` = apply / dense. Peak memory
above the start of the call is recorded for both.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from .. import apply, build_mask
from ..layout import TokenLayout
from .memory import PeakMemory, exact_rss_accounting
from .run import CLOCKS


def _forward(model, inputs: dict, clock) -> tuple[float, float]:
    device = inputs["input_ids"].device
    with PeakMemory(device) as mem, torch.no_grad():
        start = clock()
        model(**inputs, use_cache=False, logits_to_keep=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = clock() - start
    return seconds * 1e3, mem.mb


def against_dense_mask(
    model, inputs: dict[str, torch.Tensor], policies: Sequence[str], *, repeats: int = 3, clock: str = "cpu",
    exact_rss: bool = True,
) -> list[dict]:
    """One record per policy: medians (and min/max) of ``apply_ms`` and ``dense_ms``, their ``ratio``,
    ``apply_mem_mb``/``dense_mem_mb``, and ``prompt_tokens``. The dense timing includes building the mask."""
    now = CLOCKS[clock]
    if inputs["input_ids"].device.type == "cpu" and exact_rss:
        exact_rss_accounting()
    layout = TokenLayout.from_inputs(model.config, **inputs)
    samples: dict[str, dict[str, list[float]]] = {p: {} for p in policies}

    def by_hand() -> tuple[float, float]:
        start = now()
        mask = build_mask(policy, layout.visual, attention_mask=inputs.get("attention_mask"),
                          modality=layout.modality)[:, None]
        built = (now() - start) * 1e3
        ms, mb = _forward(model, {"input_ids": inputs["input_ids"], "attention_mask": mask}, now)
        return ms + built, mb

    _forward(model, inputs, now)  # warm-up
    for r in range(repeats):
        for policy in policies[r % len(policies):] + policies[: r % len(policies)]:
            with apply(model, policy):
                ms, mb = _forward(model, inputs, now)
            dense_ms, dense_mb = by_hand()
            for key, value in (("apply_ms", ms), ("apply_mem_mb", mb), ("dense_ms", dense_ms),
                               ("dense_mem_mb", dense_mb)):
                samples[policy].setdefault(key, []).append(value)
    records = []
    for policy in policies:
        rec = {"policy": policy, "prompt_tokens": layout.length, "visual_tokens": int(layout.visual[0].sum()),
               "repeats": repeats, "clock": clock}
        for key, values in samples[policy].items():
            rec[key], rec[key + "_min"], rec[key + "_max"] = statistics.median(values), min(values), max(values)
        rec["ratio"] = rec["apply_ms"] / rec["dense_ms"]
        rec["mem_ratio"] = rec["apply_mem_mb"] / rec["dense_mem_mb"] if rec["dense_mem_mb"] else None
        records.append(rec)
    return records


def against_table(records: list[dict]) -> str:
    """Markdown table of :func:`against_dense_mask` records."""
    out = ["| policy | fm.apply ms | stock + dense mask ms | ratio | fm.apply MiB | dense MiB | mem ratio |",
           "|---|---|---|---|---|---|---|"]
    for r in records:
        mem = "-" if r["mem_ratio"] is None else f"{r['mem_ratio']:.3f}"
        out.append(f"| {r['policy']} | {r['apply_ms']:.0f} | {r['dense_ms']:.0f} | {r['ratio']:.3f} | "
                   f"{r['apply_mem_mb']:.0f} | {r['dense_mem_mb']:.0f} | {mem} |")
    return "\n".join(out)
