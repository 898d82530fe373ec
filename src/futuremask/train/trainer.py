"""Supervised fine-tuning under a mask policy with Hugging Face ``Trainer``.

The recipe is the ordinary one: a :class:`~futuremask.train.collator.SFTCollator` makes batches with
labels on the answer only (and the matching ``prompt_mask``), ``Trainer`` runs the optimisation, and
the model's forward runs inside ``futuremask.apply(model, policy)``. The supervised positions of every
training row come from its ``prompt_mask`` / labels, so the policy's extra visibility (e.g. ``mma``: image tokens see the question after them)
never reaches an answer token. Train and serve with the same policy.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..hf import FutureMask, apply
from ..io import write_json_atomic
from ..layers import LayerSpec
from ..merge import Merge
from .collator import SFTCollator


@dataclass
class TrainConfig:
    """Optimisation settings (the same ones for every policy of a comparison).

    Attributes:
        policy: mask policy of the prompt pass during training (a name from ``futuremask.POLICIES``).
        merge: a :class:`~futuremask.merge.Merge`, a merge kind (``"kernel"`` / ``"lse"``) or None.
        backend: attention backend for :func:`futuremask.apply` (``"sdpa"``, ``"eager"``, ``"flex"``, ``"auto"``).
        steps: optimiser steps.
        batch_size: rows per step.
        learning_rate: peak AdamW learning rate (linear warm-up, cosine decay).
        warmup_steps: steps of linear warm-up.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping.
        seed: seed of the data order and of dropout.
        padding_side: ``"right"`` or ``"left"``.
        log_every: log the mean training loss every this many steps.
    """

    policy: str = "causal"
    merge: Merge | str | None = None
    backend: str = "sdpa"
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    padding_side: str = "right"
    log_every: int = 25


@dataclass
class TrainResult:
    """What a run produced: the logged mean losses ``[(step, loss)]`` and the wall time in seconds."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def encode_examples(collator: SFTCollator, examples: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
    """Tokenize and preprocess every example once (images included), so training steps only pad and stack."""
    return [collator.encode(ex) for ex in tqdm(examples, desc="encoding", unit="example", leave=False)]


def train(
    model: Any,
    processor: Any,
    examples: list[dict[str, Any]],
    config: TrainConfig,
    *,
    output_dir: str | os.PathLike | None = None,
    record: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``examples`` under ``config.policy`` with ``transformers.Trainer``.

    Args:
        model: a transformers VLM (trained in place).
        processor: its processor (chat template, tokenizer, image processor).
        examples: SFT examples (``prompt``/``content``, ``images``, ``answer``), e.g. from
            :func:`~futuremask.train.data.milebench_examples`.
        config: the optimisation settings.
        output_dir: when given, the trained model and processor are saved there (``save_pretrained``,
            safetensors) with ``futuremask_training.json`` recording the settings and losses.
        record: extra entries for ``futuremask_training.json`` (e.g. the checkpoint training started from).

    Returns:
        A :class:`TrainResult`.
    """
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if not examples:
        raise ValueError("no training examples")
    collator = SFTCollator(processor, padding_side=config.padding_side)
    dataset = encode_examples(collator, examples)
    result = TrainResult()

    class _Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                result.losses.append((state.global_step, float(logs["loss"])))
            if logs and "train_runtime" in logs:
                result.seconds = float(logs["train_runtime"])

    with tempfile.TemporaryDirectory(prefix="futuremask-train-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=config.steps,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            data_seed=config.seed,
            logging_steps=min(config.log_every, config.steps),  # a short run still logs its loss
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=False,  # the collator needs its own keys; the model never sees them
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[_Losses()])
        model.train()
        with apply(model, config.policy, merge=config.merge, backend=config.backend):
            trainer.train()
    model.eval()
    if any(not math.isfinite(loss) for _, loss in result.losses):
        raise RuntimeError(f"training diverged (non-finite loss): {result.losses}; lower the learning rate")
    if output_dir is not None:
        save_checkpoint(model, processor, output_dir, {"config": asdict(config), "losses": result.losses,
                                                       "seconds": result.seconds, "examples": len(examples),
                                                       **(record or {})})
    return result


class TrainerPolicy:
    """What :func:`apply_to_trainer` returns: the handles on a trainer's models (a context manager).

    Attributes:
        handles: the :class:`~futuremask.hf.FutureMask` on ``trainer.model``, then the one on
            ``trainer.ref_model`` when the trainer has a reference model.
    """

    def __init__(self, handles: list[FutureMask]) -> None:
        self.handles = handles

    def remove(self) -> None:
        """Restore every model exactly as it was."""
        for handle in reversed(self.handles):
            handle.remove()

    def __enter__(self) -> TrainerPolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_to_trainer(
    trainer: Any, policy: str, merge: Merge | str | None = None, backend: str = "auto", layers: LayerSpec = None
) -> TrainerPolicy:
    """Apply one policy to a trainer's model and to its reference model (``trainer.ref_model``), if any.

    Trainers such as TRL's DPO, KTO or GRPO score each batch under a separate reference model as well as
    under the trained one; both must run the same masks, or the rewards compare two different models
    (DPO's step-0 loss would not be ln 2). A trainer without ``ref_model`` (SFT, or a PEFT model whose
    reference is the same model with its adapters off) gets the one handle on ``trainer.model``.

    Args:
        trainer: a transformers ``Trainer`` (TRL's included), before ``trainer.train()``.
        policy, merge, backend, layers: as for :func:`futuremask.apply`.

    Returns:
        A :class:`TrainerPolicy`: ``with apply_to_trainer(trainer, "mma"): trainer.train()``.
    """
    models = [trainer.model]
    if getattr(trainer, "ref_model", None) is not None:
        models.append(trainer.ref_model)
    handles: list[FutureMask] = []
    try:
        for model in models:
            inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
            handles.append(apply(inner, policy, merge=merge, backend=backend, layers=layers))
    except BaseException:
        TrainerPolicy(handles).remove()
        raise
    return TrainerPolicy(handles)


def save_checkpoint(model: Any, processor: Any, output_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Save model + processor (safetensors) and ``futuremask_training.json``; returns the folder."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    write_json_atomic(out / "futuremask_training.json", record, indent=2)
    return out


__all__ = ["TrainConfig", "TrainResult", "TrainerPolicy", "apply_to_trainer", "encode_examples", "save_checkpoint",
           "train"]
