"""Supervised fine-tuning under a mask policy: the collator, the Trainer recipe, the policy sweep.

``futuremask.apply(model, policy)`` already makes a forward pass with ``labels`` train correctly: the
prompt region is every position before the first supervised label, so the answer never reaches a
visual row. This package adds the data side (:class:`SFTCollator`, MileBench examples) and the
``futuremask train`` command. Submodules import transformers lazily.
"""

from .collator import SFTCollator

__all__ = ["SFTCollator"]
