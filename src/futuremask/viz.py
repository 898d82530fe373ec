"""Pictures of masks and attention weights (matplotlib, headless).

* :func:`plot_mask` draws each policy's mask side by side, plus a ``merge`` panel: the causal mask
  with the sink column highlighted in the rows whose future the light variant folds into it.
* :func:`plot_attention` draws :class:`~futuremask.attnmap.AttentionMap` objects side by side.

Every picture labels the text and visual spans of the sequence on both axes. Masks always come
from :func:`futuremask.build_mask`; nothing here re-implements a policy.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .io import write_bytes_atomic
from .layout import IMAGE, TEXT, VIDEO, TokenLayout
from .names import DEFAULT_PANELS, MERGE_PANEL
from .policies import build_mask, get_policy

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .attnmap import AttentionMap

PANEL_TITLES = {
    "causal": "causal",
    "future": "future  (M^f)",
    "future_v2v": "future_v2v  (M^v2v)",
    "future_v2t": "future_v2t  (M^v2t)",
    "mma": "mma  (modality-mutual)",
}
# RGB colours of mask cells
BLOCKED = (1.0, 1.0, 1.0)
CAUSAL = (0.16, 0.30, 0.56)
FUTURE = (0.96, 0.58, 0.12)
SINK = (0.80, 0.10, 0.15)
PADDING = (0.82, 0.82, 0.82)
KIND_NAMES = {TEXT: "text", IMAGE: "image", VIDEO: "video"}
_LAYOUT_RUN = re.compile(r"([TVIW])(\d+)", re.IGNORECASE)
_LAYOUT_CODES = {"T": TEXT, "V": IMAGE, "I": IMAGE, "W": VIDEO}


@dataclass(frozen=True)
class Span:
    """A run ``[start, stop)`` of positions of one kind (``text``, ``image``, ``video`` or ``pad``)."""

    start: int
    stop: int
    kind: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.stop - self.start}"


def parse_layout(spec: str) -> TokenLayout:
    """Layout of one sequence from a string of runs, e.g. ``"T4 V16 T6 V16 T8"``.

    ``T`` is text, ``V`` (or ``I``) image tokens, ``W`` video tokens; each letter is followed by the
    run length. Spaces and commas between runs are optional.
    """
    compact = re.sub(r"[\s,]+", "", spec)
    runs = _LAYOUT_RUN.findall(compact)
    if not runs or "".join(f"{k}{n}" for k, n in runs) != compact:
        raise ValueError(
            f"cannot read layout {spec!r}: write runs of T(ext) / V(isual) tokens with their lengths, "
            'e.g. "T4 V16 T6 V16 T8"'
        )
    modality: list[int] = []
    for code, count in runs:
        if int(count) < 1:
            raise ValueError(f"layout {spec!r}: run {code}{count} must have at least one token")
        modality += [_LAYOUT_CODES[code.upper()]] * int(count)
    mod = torch.tensor(modality, dtype=torch.long)[None]
    return TokenLayout(valid=torch.ones_like(mod, dtype=torch.bool), modality=mod, prompt=torch.ones_like(mod, dtype=torch.bool))


def as_layout(layout: TokenLayout | str | torch.Tensor) -> TokenLayout:
    """A one-row :class:`TokenLayout` from a layout string, a bool ``is_visual [L]`` or a layout (row 0)."""
    if isinstance(layout, str):
        return parse_layout(layout)
    if isinstance(layout, TokenLayout):
        return TokenLayout(layout.valid[:1].cpu(), layout.modality[:1].cpu(), layout.prompt[:1].cpu())
    return TokenLayout.from_masks(torch.as_tensor(layout).bool().reshape(1, -1).cpu())


def spans(layout: TokenLayout) -> list[Span]:
    """Maximal runs of one kind in row 0 of ``layout`` (padding is its own kind)."""
    kinds = [
        KIND_NAMES.get(int(m), "visual") if bool(v) else "pad"
        for m, v in zip(layout.modality[0].tolist(), layout.valid[0].tolist(), strict=True)
    ]
    out: list[Span] = []
    start = 0
    for j in range(1, len(kinds) + 1):
        if j == len(kinds) or kinds[j] != kinds[start]:
            out.append(Span(start, j, kinds[start]))
            start = j
    return out


def _mask(policy: str, layout: TokenLayout) -> np.ndarray:
    """bool ``[L, L]`` of row 0, straight from :func:`futuremask.build_mask`."""
    return build_mask(
        policy, layout.visual, attention_mask=layout.valid.long(), prompt_mask=layout.prompt, modality=layout.modality
    )[0].numpy()


def mask_image(panel: str, layout: TokenLayout, *, merge_policy: str = "future") -> np.ndarray:
    """float ``[L, L, 3]`` RGB picture of one panel, one pixel per (query row, key column) cell.

    Cells allowed by the causal part are :data:`CAUSAL`, extra (future) cells the policy allows are
    :data:`FUTURE`, blocked cells :data:`BLOCKED`, padding keys :data:`PADDING`. The ``merge`` panel
    is the causal mask with :data:`SINK` on the sink cell of every row that has future under
    ``merge_policy``.
    """
    layout = as_layout(layout)
    causal = _mask("causal", layout)
    length = causal.shape[0]
    img = np.empty((length, length, 3), dtype=np.float32)
    img[:] = BLOCKED
    img[causal] = CAUSAL
    if panel == MERGE_PANEL:
        extra = _mask(merge_policy, layout) & ~causal
        sink = int(layout.first_valid[0])
        rows = extra.any(-1) & (np.arange(length) >= sink)
        img[rows, sink] = SINK
    else:
        allowed = _mask(panel, layout)
        img[allowed & ~causal] = FUTURE
    img[:, ~layout.valid[0].numpy()] = PADDING
    return img


def label_spans(ax: Axes, layout: TokenLayout, *, x: bool = True, y: bool = True, min_label: int = 1) -> None:
    """Tick labels at the centre of each span and thin lines at span boundaries."""
    parts = spans(layout)
    centres = [(s.start + s.stop - 1) / 2 for s in parts]
    labels = [s.label if s.stop - s.start >= min_label else "" for s in parts]
    for stop in [s.stop for s in parts[:-1]]:
        if x:
            ax.axvline(stop - 0.5, color="0.55", lw=0.6)
        if y:
            ax.axhline(stop - 0.5, color="0.55", lw=0.6)
    if x:
        ax.set_xticks(centres, labels, rotation=90, fontsize=7)
    if y:
        ax.set_yticks(centres, labels, fontsize=7)
    ax.tick_params(length=0)


def plot_mask(
    layout: TokenLayout | str | torch.Tensor,
    policies: Sequence[str] | None = None,
    *,
    merge_policy: str = "future",
    output: str | os.PathLike | None = None,
    title: str | None = None,
    panel_size: float = 3.2,
    dpi: int = 110,
) -> Figure:
    """Draw the mask of each policy side by side.

    Args:
        layout: a layout string (``"T4 V16 T6 V16 T8"``), a bool ``is_visual [L]``, or a
            :class:`TokenLayout` (row 0 is drawn).
        policies: panel names: any of :data:`futuremask.POLICIES` (aliases accepted) and ``"merge"``
            (default: causal, future, future_v2v, future_v2t, mma, merge).
        merge_policy: the policy whose future the ``merge`` panel folds into the sink.
        output: write the figure here (PNG, SVG or PDF, by extension).
        title: figure title.

    Returns:
        The matplotlib figure, one axes per panel (rows = queries ``i``, columns = keys ``j``).

    Example:
        >>> import futuremask as fm
        >>> fig = fm.plot_mask("T4 V16 T6", ["causal", "future_v2v"])  # doctest: +SKIP
    """
    import matplotlib

    if output is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    layout = as_layout(layout)
    panels = [MERGE_PANEL if p == MERGE_PANEL else get_policy(p).name for p in (policies or DEFAULT_PANELS)]
    length = layout.length
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_size * len(panels), panel_size + 1.3), dpi=dpi, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        rgb = (mask_image(panel, layout, merge_policy=merge_policy) * 255).round().astype(np.uint8)  # 4x smaller
        # "auto": nearest when cells are big; antialiased when a long prompt has many cells per pixel
        ax.imshow(rgb, interpolation="auto", extent=(-0.5, length - 0.5, length - 0.5, -0.5))
        if panel == MERGE_PANEL:
            _draw_sink_runs(ax, layout, merge_policy)
        name = f"merge  ({get_policy(merge_policy).name} → sink)" if panel == MERGE_PANEL else PANEL_TITLES.get(panel, panel)
        ax.set_title(name, fontsize=9)
        label_spans(ax, layout, min_label=max(1, length // 60))  # tiny spans of long prompts stay unlabelled
        ax.set_xlabel("key j", fontsize=8)
        ax.set_ylabel("query i", fontsize=8)
    legend = [Patch(color=CAUSAL, label="causal (j ≤ i)"), Patch(color=FUTURE, label="future allowed by the policy"),
              Patch(facecolor=BLOCKED, edgecolor="0.6", label="blocked")]
    if MERGE_PANEL in panels:
        legend.append(Patch(color=SINK, label="sink receiving the merged future"))
    if not bool(layout.valid.all()):
        legend.append(Patch(color=PADDING, label="padding"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if output is not None:
        save_figure(fig, output)
    return fig


def _draw_sink_runs(ax: Axes, layout: TokenLayout, merge_policy: str) -> None:
    """Trace the sink cells of the merge panel with a line, so one column stays visible in long prompts."""
    img = mask_image(MERGE_PANEL, layout, merge_policy=merge_policy)
    sink = int(layout.first_valid[0])
    rows = np.flatnonzero(np.all(img[:, sink] == np.array(SINK, dtype=np.float32), axis=-1))
    if rows.size == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) > 1)
    for start, stop in zip(np.r_[rows[0], rows[breaks + 1]], np.r_[rows[breaks], rows[-1]], strict=True):
        ax.plot([sink, sink], [start - 0.5, stop + 0.5], color=SINK, lw=2.5, solid_capstyle="butt", zorder=5, clip_on=False)


def plot_attention(
    maps: Sequence[AttentionMap], *, output: str | os.PathLike | None = None, title: str | None = None, dpi: int = 110
) -> Figure:
    """Attention maps side by side: one column per map.

    Each column has three panels: the weights (rows = queries, columns = keys, square-root colour
    scale); the mean weight the *visual* query rows give each key (which tokens visual rows attend
    to); and, per query row, the mass on future keys (``j > i``) and on the sink token.
    """
    import matplotlib

    if output is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    if not maps:
        raise ValueError("plot_attention needs at least one AttentionMap")
    fig, axes = plt.subplots(3, len(maps), figsize=(4.6 * len(maps), 9.6), dpi=dpi, squeeze=False,
                             gridspec_kw={"height_ratios": [3.2, 1, 1]})
    for col, amap in enumerate(maps):
        layout = as_layout(amap.layout)
        w = amap.weights.float().numpy()
        length = w.shape[0]
        top, mid, low = axes[0][col], axes[1][col], axes[2][col]
        im = top.imshow(w, cmap="magma", norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(w.max()), 1e-6)),
                        interpolation="nearest", extent=(-0.5, length - 0.5, length - 0.5, -0.5))
        label_spans(top, layout, min_label=max(1, length // 40))
        top.set_title(amap.title, fontsize=9)
        top.set_xlabel("key j", fontsize=8)
        top.set_ylabel("query i", fontsize=8)
        fig.colorbar(im, ax=top, fraction=0.046, pad=0.02)
        visual = layout.visual[0].numpy() & layout.valid[0].numpy()
        positions = np.arange(length)
        for ax in (mid, low):
            for s in spans(layout):
                if s.kind in ("image", "video"):
                    ax.axvspan(s.start - 0.5, s.stop - 0.5, color=FUTURE, alpha=0.15, lw=0)
            ax.set_xlim(-0.5, length - 0.5)
        received = w[visual].mean(0) if visual.any() else np.zeros(length)
        mid.plot(positions, received, color=CAUSAL, lw=1)
        mid.set_ylabel("weight from\nvisual rows", fontsize=8)
        mid.set_xlabel("key j (shaded: visual)", fontsize=8)
        low.plot(positions, amap.future_mass.numpy(), color=FUTURE, lw=1.2, label="mass on future keys")
        low.plot(positions, amap.sink_mass.numpy(), color=SINK, lw=1.2, label="mass on the sink")
        low.set_ylim(-0.02, 1.02)
        low.set_xlabel("query i (shaded: visual)", fontsize=8)
        low.set_ylabel("attention mass", fontsize=8)
        low.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if output is not None:
        save_figure(fig, output)
    return fig


def save_figure(fig: Figure, output: str | os.PathLike) -> str:
    """Write ``fig`` atomically (:func:`futuremask.io.write_bytes_atomic`); the format follows the extension."""
    path = os.fspath(output)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in ("png", "svg", "pdf"):
        raise ValueError(f"cannot tell the picture format of {path!r}: end the file name with .png, .svg or .pdf")
    meta = {"Date": None} if ext == "svg" else ({"CreationDate": None} if ext == "pdf" else None)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=ext, metadata=meta)
    write_bytes_atomic(path, buffer.getvalue())
    return path


__all__ = ["DEFAULT_PANELS", "Span", "mask_image", "parse_layout", "plot_attention", "plot_mask", "spans"]
