"""The fixed words users type (API arguments, CLI choices), importable without torch.

Policy names are not here: they live in the registry of :mod:`futuremask.policies` (which is
torch-free at import too), because :func:`~futuremask.policies.register_policy` adds to them.
"""

from __future__ import annotations

MERGE_KINDS = ("kernel", "lse")
"""``Merge.kind``: the paper's pooled scores, or the mass-preserving log-sum-exp (DESIGN §4)."""

POOLS = ("max", "mean")
"""``Merge.pool``: how a window of future scores is pooled."""

BACKENDS = ("auto", "sdpa", "eager", "flex")
"""``fm.apply(..., backend=)``: ``auto`` is flex on CUDA, sdpa elsewhere (DESIGN §6)."""

DTYPES = ("float32", "bfloat16", "float16")
"""``--dtype`` names besides ``auto`` (see :func:`futuremask.checkpoint.resolve_dtype`)."""

PAPER_POLICIES = ("causal", "future", "future_v2v", "future_v2t")
"""The masks of Pei et al.'s tables (arXiv 2505.18605): the baseline and the three future-aware ones."""

BENCH_POLICIES = (*PAPER_POLICIES, "mma")
"""What ``futuremask bench`` measures by default: the paper's masks and modality-mutual attention."""

PROMPT_STYLES = ("chat", "milebench")
"""``eval --prompt-style``: the keys of :data:`futuremask.eval.prompt_styles.STYLES` (a test holds them equal)."""

IMAGE_ASPECTS = ("pad", "processor")
"""``eval --image-aspect`` (milebench style): pad to a square, or leave the images to the processor."""

MERGE_PANEL = "merge"
"""``show-mask``'s extra panel: the causal mask with the sink column the merge writes to."""

DEFAULT_PANELS = (*PAPER_POLICIES, "mma", MERGE_PANEL)
"""The panels ``show-mask`` draws by default."""
