"""Supervised fine-tuning under a mask policy: the collator, the Trainer recipe, the policy sweep.

``futuremask.apply(model, policy)`` already makes a forward pass with ``labels`` train correctly: every
supervised token starts a new segment, so the answer never reaches a visual row. A training forward
without labels needs ``prompt_mask``: :class:`SFTCollator` emits it, :class:`PromptMaskCollator` adds it
to any other collator's batches (TRL's, for example). :func:`apply_to_trainer` applies one policy to a
trainer's model and to its reference model (DPO and the like). This package adds the data side (:class:`SFTCollator`,
MileBench examples) and the ``futuremask train`` command. Names load on first use, so the command's
registration loads no torch.
"""

from .._lazy import lazy_exports

_EXPORTS = {"PromptMaskCollator": ".collator", "SFTCollator": ".collator", "apply_to_trainer": ".trainer"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
