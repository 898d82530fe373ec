"""futuremask: future-aware and modality-mutual attention masks for Hugging Face VLMs.

>>> import futuremask as fm
>>> with fm.apply(model, "future_v2v"):          # doctest: +SKIP
...     out = model.generate(**inputs, max_new_tokens=64)
"""

from .attention import attention
from .hf import BACKENDS, FutureMask, MissingPromptError, PromptSplitError, apply, continuation_logprob
from .layout import TokenLayout
from .merge import Merge
from .policies import POLICIES, build_mask, get_policy, register_policy
from .viz import plot_mask

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "POLICIES",
    "FutureMask",
    "Merge",
    "MissingPromptError",
    "PromptSplitError",
    "TokenLayout",
    "apply",
    "attention",
    "build_mask",
    "continuation_logprob",
    "get_policy",
    "plot_mask",
    "register_policy",
]
