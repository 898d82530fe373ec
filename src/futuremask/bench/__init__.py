"""Latency and memory benchmark of the mask policies (``futuremask bench``).

>>> from futuremask.bench import bench                      # doctest: +SKIP
>>> records = bench(images=2, tokens_per_image=576, text_tokens=1152, repeats=3)

Names load on first use, so ``futuremask bench --help`` loads no torch.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "BenchSettings": ".run",
    "PromptShape": ".shapes",
    "SyntheticSize": ".shapes",
    "Variant": ".run",
    "bench": ".api",
    "load_model": ".api",
    "run_bench": ".run",
    "synthetic_llava": ".synthetic",
    "synthetic_prompt": ".synthetic",
    "variants": ".run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
