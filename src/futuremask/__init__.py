"""futuremask: future-aware and modality-mutual attention masks for Hugging Face VLMs.

>>> import futuremask as fm
>>> with fm.apply(model, "future_v2v"):          # doctest: +SKIP
...     out = model.generate(**inputs, max_new_tokens=64)
"""

from .attention import attention
from .hf import BACKENDS, FutureMask, MissingPromptError, PromptSplitError, apply, continuation_logprob
from .layout import TokenLayout
from .merge import Merge
from .policies import build_mask, get_policy, policy_names, register_policy
from .viz import plot_mask

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "POLICIES":  # ``fm.POLICIES``: every registered policy, those added by register_policy included
        return policy_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
