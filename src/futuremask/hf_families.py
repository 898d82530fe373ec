"""What futuremask needs to know about particular transformers families (docs/models.md).

Everything here is a small table keyed by ``config.model_type`` plus the structural checks that
find a layout futuremask cannot serve:

* :func:`check_supported`: the families ``fm.apply`` refuses, with one line naming the family: VLMs
  whose image reaches the text model through cross-attention (there are no visual tokens in the
  sequence to apply a policy to), encoder-decoder models, and models none of whose modules builds
  its masks through ``transformers.masking_utils`` (futuremask's masks enter there).
* :data:`PROMPT_INPUTS`: per-token inputs a family needs on its prompt pass for its own mask to be
  defined (PaliGemma's prefix-LM ``token_type_ids``).
* :func:`continuation_token_types`: the value a per-token input takes on a continuation appended to
  the prompt (PaliGemma: 1, the causal suffix; every other family: 0, text).
"""

from __future__ import annotations

import sys
from typing import Any

from .layout import PER_TOKEN_KEYS, text_config

MASKING_MODULE = "transformers.masking_utils"

UNSUPPORTED: dict[str, str] = {
    "mllama": "a cross-attention VLM: the image reaches the text model through cross-attention layers, "
              "not as tokens of the sequence, so no policy over visual tokens applies",
    "idefics": "a cross-attention VLM (gated cross-attention to the image, Flamingo-style): there are no "
               "visual tokens in the sequence to apply a policy to",
}
"""model_type -> why ``fm.apply`` refuses it (checked before the structural rules)."""

CROSS_ATTENTION_KEYS = ("cross_attention_layers", "cross_attention_frequency")
"""Config fields that mark a text model with cross-attention layers to the image."""

PROMPT_INPUTS: dict[str, tuple[str, str]] = {
    "paligemma": (
        "token_type_ids",
        "PaliGemma's prompt mask is its prefix-LM block over token_type_ids == 0; without them "
        "transformers runs the prompt bidirectionally under sdpa and causally under eager, so there is no "
        "single stock mask to add a policy to. Pass the processor's token_type_ids",
    ),
}
"""model_type -> (the per-token input its prompt pass needs, why)."""

CONTINUATION_TOKEN_TYPES: dict[str, dict[str, int]] = {"paligemma": {"token_type_ids": 1}}
"""model_type -> per-token input -> its value on appended (scored or generated) tokens, when not 0."""


def model_type(config: Any) -> str:
    """``config.model_type`` ('' when the config has none)."""
    return str(getattr(config, "model_type", "") or "")


def check_supported(model: Any) -> None:
    """Raise ValueError, in one line naming the family, when ``model``'s layout is one futuremask cannot serve."""
    config = model.config
    family = f"{model_type(config) or '?'} ({type(model).__name__})"
    reason = UNSUPPORTED.get(model_type(config))
    text = text_config(config)
    if reason is None and any(getattr(text, key, None) for key in CROSS_ATTENTION_KEYS):
        reason = "its text model has cross-attention layers to the image, not visual tokens in the sequence"
    if reason is None and (getattr(config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False)):
        reason = "an encoder-decoder model; futuremask handles decoder-only text models"
    if reason is None and not uses_masking_utils(model):
        reason = (f"none of its modules builds its attention masks through {MASKING_MODULE}, where futuremask's "
                  "masks enter")
    if reason is not None:
        raise ValueError(f"futuremask does not support {family}: {reason}. Supported families: docs/models.md")


def uses_masking_utils(model: Any) -> bool:
    """Whether a Python module defining one of ``model``'s submodules imports from ``transformers.masking_utils``."""
    names = {type(m).__module__ for m in model.modules()}
    return any(_imports_masking(sys.modules.get(name)) for name in names)


def _imports_masking(module: Any) -> bool:
    if module is None:
        return False
    return any(getattr(value, "__module__", None) == MASKING_MODULE for value in vars(module).values())


def missing_prompt_input(config: Any, inputs: dict[str, Any]) -> str | None:
    """The error message when a prompt pass of ``config``'s family lacks an input its mask needs, else None."""
    need = PROMPT_INPUTS.get(model_type(config))
    if need is None or inputs.get(need[0]) is not None:
        return None
    return f"futuremask on {model_type(config)}: {need[1]}"


def continuation_token_types(config: Any) -> dict[str, int]:
    """Per-token input -> the value it takes on tokens appended after the prompt (0 unless the family says)."""
    values = dict.fromkeys(PER_TOKEN_KEYS, 0)
    values.update(CONTINUATION_TOKEN_TYPES.get(model_type(config), {}))
    return values
