"""PNG plot of a benchmark run: each variant's ratio to ``causal`` (prefill, attention, decode, memory)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..io import write_bytes_atomic

PANELS = (
    ("prefill_ms", "prefill_ratio", "prefill time"),
    ("attn_ms", "attn_ratio", "attention layer time"),
    ("decode_ms_per_token", "decode_ratio", "decode ms/token"),
    ("peak_mem_mb", "mem_ratio", "peak memory"),
)


def plot(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Bar charts of the ratios to ``causal`` (min-max range as error bars), written atomically to ``path``.

    The prefill and attention panels also mark each variant's attended-pairs ratio.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in records]
    xs = range(len(records))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 4.2), squeeze=False)
    for ax, (metric, ratio, name) in zip(axes[0], PANELS, strict=True):
        base = records[0].get(metric)
        vals, lo, hi = [], [], []
        for r in records:
            v = r.get(ratio)
            vals.append(v if v is not None else 0.0)
            if v is None or not base:
                lo.append(0.0)
                hi.append(0.0)
            else:
                lo.append(max(v - r[metric + "_min"] / base, 0.0))
                hi.append(max(r[metric + "_max"] / base - v, 0.0))
        ax.bar(xs, vals, yerr=[lo, hi], color="#4c72b0", capsize=3)
        if ratio in ("prefill_ratio", "attn_ratio"):
            ax.scatter(
                xs,
                [r["pairs_ratio"] for r in records],
                marker="_",
                s=300,
                color="#dd8452",
                label="attended pairs ratio",
                zorder=3,
            )
            ax.legend(loc="upper left", fontsize=8)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{name} / causal", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return Path(path)
