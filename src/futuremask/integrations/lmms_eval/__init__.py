"""lmms-eval plugin: the model ``futuremask`` (``pip install 'futuremask[lmms]'``, docs/lmms-eval.md).

lmms-eval finds it through the ``lmms_eval.models`` entry point, which names :func:`manifest`.
``--model futuremask`` is the chat model (tasks' ``doc_to_messages``); ``--force_simple`` selects the
simple model, the one lmms-eval runs ``multiple_choice`` / ``loglikelihood`` tasks with.
"""

from __future__ import annotations

MODEL_NAME = "futuremask"
_MODULE = "futuremask.integrations.lmms_eval.model"


def manifest():
    """The entry point's payload: an lmms-eval ``ModelManifest`` naming both classes (imported lazily)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_NAME,
        chat_class_path=f"{_MODULE}.FutureMaskChat",
        simple_class_path=f"{_MODULE}.FutureMaskSimple",
    )


__all__ = ["MODEL_NAME", "manifest"]
