"""The benchmark's outputs: a terminal table and an atomically written JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import write_json_atomic


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(rec: dict, metric: str, digits: int = 1) -> str:
    med, lo, hi = rec.get(metric), rec.get(metric + "_min"), rec.get(metric + "_max")
    if med is None:
        return "-"
    half = (hi - lo) / 2 if lo is not None and hi is not None else 0.0
    return f"{med:.{digits}f} ±{half:.{digits}f}"


COLUMNS = (
    ("variant", lambda r: r["label"]),
    ("prefill ms", lambda r: _spread(r, "prefill_ms", 0)),
    ("x causal", lambda r: _fmt(r["prefill_ratio"], 3)),
    ("pairs x", lambda r: _fmt(r["pairs_ratio"], 3)),
    ("attn ms", lambda r: _spread(r, "attn_ms", 1)),
    ("x causal", lambda r: _fmt(r["attn_ratio"], 3)),
    ("decode ms/tok", lambda r: _spread(r, "decode_ms_per_token", 1)),
    ("x causal", lambda r: _fmt(r["decode_ratio"], 3)),
    ("peak MiB", lambda r: _spread(r, "peak_mem_mb", 0)),
    ("x causal", lambda r: _fmt(r["mem_ratio"], 3)),
    ("mask+plan %", lambda r: _fmt(None if r["mask_share"] is None else 100 * r["mask_share"], 2)),
)


def table(records: list[dict[str, Any]]) -> str:
    """Plain-text table of the records: medians ± half the min-max range, and ratios to ``causal``."""
    rows = [[name for name, _ in COLUMNS]] + [[fn(r) for _, fn in COLUMNS] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(records: list[dict[str, Any]]) -> str:
    """The same table in Markdown (for BENCHMARKS.md)."""
    head = [name for name, _ in COLUMNS]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in records:
        out.append("| " + " | ".join(fn(r) for _, fn in COLUMNS) + " |")
    return "\n".join(out)


def write_json(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` as a JSON list to ``path`` atomically (temporary file, then rename)."""
    write_json_atomic(path, records, indent=1)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m futuremask.bench.report RUN.json [--markdown]``: ``futuremask bench-report``, its old entry."""
    import sys

    from ..cli import main as cli_main

    return cli_main(["bench-report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
