"""futuremask: future-aware and modality-mutual attention masks for Hugging Face VLMs.

>>> import futuremask as fm
>>> with fm.apply(model, "future_v2v"):          # doctest: +SKIP
...     out = model.generate(**inputs, max_new_tokens=64)

The public names load on first use, so ``import futuremask`` (and the ``futuremask`` command, and a
scoring module) pulls in neither torch nor transformers until something needs them.
"""

import sys
import types

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BACKENDS": ".names",
    "POLICIES": ".policies",  # computed on access: policies added by register_policy are listed too
    "FutureMask": ".hf",
    "Handle": ".hf",
    "Merge": ".merge",
    "MissingPromptError": ".hf",
    "PromptSplitError": ".hf",
    "TokenLayout": ".layout",
    "apply": ".hf",
    "attention": ".attention",
    "build_mask": ".policies",
    "continuation_logprob": ".hf",
    "get_policy": ".policies",
    "plot_mask": ".viz",
    "register_policy": ".policies",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """``futuremask.attention`` is both a submodule and the public function ``fm.attention``."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "attention" and isinstance(value, types.ModuleType):
            return  # importing the submodule must not hide the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
