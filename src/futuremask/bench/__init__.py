"""Latency and memory benchmark of the mask policies (``futuremask bench``).

>>> from futuremask.bench import bench                      # doctest: +SKIP
>>> records = bench(images=2, tokens_per_image=576, text_tokens=1152, repeats=3)
"""

from .api import bench, load_model
from .run import BenchSettings, Variant, run_bench, variants
from .synthetic import PromptShape, SyntheticSize, synthetic_llava, synthetic_prompt

__all__ = [
    "BenchSettings",
    "PromptShape",
    "SyntheticSize",
    "Variant",
    "bench",
    "load_model",
    "run_bench",
    "synthetic_llava",
    "synthetic_prompt",
    "variants",
]
