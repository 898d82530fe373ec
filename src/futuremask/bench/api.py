"""Python entry point of the benchmark: load (or build) a model, make the prompt, run, report."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_model as load_checkpoint_model
from ..checkpoint import resolve_dtype
from ..names import BENCH_POLICIES
from .run import BenchSettings, run_bench
from .synthetic import PromptShape, SyntheticSize, parameter_count, synthetic_llava, synthetic_prompt

SYNTHETIC = "synthetic"
DEFAULT_SIZE = SyntheticSize()


def load_model(
    name: str = SYNTHETIC, *, size: SyntheticSize = DEFAULT_SIZE, dtype: str = "float32", device: str = "cpu"
):
    """The model to measure: ``"synthetic"`` (random weights, shape ``size``) or a hub id / local path.

    A hub id or path is loaded with ``AutoModelForImageTextToText`` (the files must be available
    locally or downloadable); its config must name an ``image_token_id``.
    """
    torch_dtype = resolve_dtype(dtype, device)
    if name == SYNTHETIC:
        model = synthetic_llava(size)
    else:
        model = load_checkpoint_model(name, dtype=dtype, device=device)
        model.generation_config.eos_token_id = None  # benchmarks decode a fixed number of tokens
    # "auto" on CUDA keeps the checkpoint's (or the synthetic model's float32) dtype, and still moves it
    return model.to(device=device, dtype=torch_dtype) if isinstance(torch_dtype, torch.dtype) else model.to(device)


def bench(
    model: Any = SYNTHETIC,
    *,
    size: SyntheticSize = DEFAULT_SIZE,
    images: int = 2,
    tokens_per_image: int = 576,
    text_tokens: int = 1152,
    batch: int = 1,
    new_tokens: int = 16,
    policies: Sequence[str] = BENCH_POLICIES,
    merges: Sequence[str | None] = (None, "kernel"),
    repeats: int = 3,
    backend: str = "auto",
    kernel_bench: bool = True,
    clock: str = "auto",
    exact_rss: bool = True,
    dtype: str = "float32",
    device: str = "cpu",
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the benchmark and return its records (see :func:`futuremask.bench.run.run_bench`).

    ``model`` is ``"synthetic"``, a hub id / local path, or an already loaded transformers VLM. With
    ``json_path`` / ``plot_path`` the records / a PNG of the ratios are written there. ``clock``:
    ``auto`` (process CPU time on CPU, wall time on CUDA), ``cpu`` or ``wall``. ``exact_rss`` (CPU):
    fix glibc's mmap threshold so RSS follows live memory, for the rest of the process.
    """
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = load_model(model, size=size, dtype=dtype, device=device)
    device = next(model.parameters()).device
    inputs = synthetic_prompt(model.config, PromptShape(images, tokens_per_image, text_tokens, batch))
    inputs = {k: v.to(device) for k, v in inputs.items()}
    extra = {
        "model": name,
        "params_m": round(parameter_count(model) / 1e6, 1),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    settings = BenchSettings(
        policies=policies,
        merges=merges,
        new_tokens=new_tokens,
        repeats=repeats,
        backend=backend,
        kernel_bench=kernel_bench,
        clock=clock,
        exact_rss=exact_rss,
        extra=extra,
    )
    records = run_bench(model, inputs, settings, progress=progress)
    if json_path is not None:
        from .report import write_json

        write_json(json_path, records)
    if plot_path is not None:
        from .plot import plot

        title = (
            f"{name} ({extra['params_m']}M), {records[0]['prompt_tokens']} tokens "
            f"({records[0]['visual_tokens']} visual), batch {batch}, {repeats} rounds"
        )
        plot(records, plot_path, title=title)
    return records
