"""The measuring loop: every (policy, merge) variant, interleaved, repeated, compared with ``causal``.

One *measurement* of a variant applies it to the model (:func:`futuremask.apply`), runs
``generate()`` for ``new_tokens`` greedy tokens on the prompt and records

* ``prefill_ms``: from the call to the end of the first step (the prompt pass and the first token);
* ``decode_ms_per_token``: the time of the remaining ``new_tokens - 1`` steps, per step;
* ``peak_mem_mb``: the peak memory of the call above what was held before it (:class:`PeakMemory`);
* ``mask_ms``/``mask_calls``: time spent in, and calls to, futuremask's mask builder for the prompt pass;
  ``plan_ms``: time in blocked SDPA's plan of that mask (CPU, long prompts); ``mask_share``: their sum
  over ``prefill_ms``, all three timed with the same clock inside the same call.

Times are process CPU time on CPU (``time.process_time``: on a shared machine, time spent waiting
for a core is not counted; with several threads it is their sum) and wall time on CUDA; on CPU the
allocator is set to map large blocks on their own so that RSS follows live memory
(:func:`~futuremask.bench.memory.exact_rss_accounting`). Rounds visit every variant once, in an
order rotated from round to round, so drift in the machine's load spreads over all variants; each
figure is the median of the rounds, with its min and max, and each ratio divides a variant's
median by the median of ``causal`` (no merge) from the same run. A second, kernel-level pass times
one attention layer alone under each variant (``attn_ms``) next to the share of attended pairs
(``pairs_ratio``), which is what the masks change.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from .. import apply
from ..hf import IMPL_PREFIX
from ..kernels import blocked
from ..layout import TokenLayout
from ..merge import Merge, PolicyMerge
from ..merge_spec import merge_spec
from ..names import BENCH_POLICIES
from ..policies import allowed_mod, get_policy
from .kernel import attention_timer
from .memory import PeakMemory, exact_rss_accounting

METRICS = ("prefill_ms", "decode_ms_per_token", "peak_mem_mb", "attn_ms")


class Variant(PolicyMerge):
    """One configuration to measure: a policy and an optional merge (:class:`~futuremask.merge.PolicyMerge`)."""


def variants(policies: Sequence[str], merges: Sequence[Merge | str | None]) -> list[Variant]:
    """``causal`` (first) and every policy x merge (``causal`` with a merge has nothing to fold: skipped)."""
    names = [get_policy(p).name for p in policies]
    out = [Variant("causal")]
    for merge in merges:
        merge = Merge.coerce(merge)
        for name in names:
            v = Variant(name, merge)
            if v not in out and not (name == "causal" and merge is not None):
                out.append(v)
    return out


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


class _Clock(StoppingCriteria):
    """Time stamps of the end of every generation step (never stops generation)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if input_ids.is_cuda:
            torch.cuda.synchronize()
        self.stamps.append(self.now())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _MaskSpy:
    """Counts prompt-pass calls to futuremask's mask builders, and times them and blocked SDPA's plans.

    Both are timed with the clock of the measurement (``now``), inside the ``generate`` call, so their
    sum is part of ``prefill_ms`` and ``mask_share`` never exceeds 1.
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.calls = 0
        self.seconds = 0.0
        self.plan_seconds = 0.0
        self._names: list[str] = []
        self._plan = None

    def __enter__(self) -> _MaskSpy:
        for name in list(ALL_MASK_ATTENTION_FUNCTIONS):
            if name.startswith(IMPL_PREFIX):
                ALL_MASK_ATTENTION_FUNCTIONS[name] = self._wrap(ALL_MASK_ATTENTION_FUNCTIONS[name])
                self._names.append(name)
        self._plan = blocked.cached_plan

        def timed_plan(*args, **kwargs):
            start = self.now()
            try:
                return self._plan(*args, **kwargs)
            finally:
                self.plan_seconds += self.now() - start

        blocked.cached_plan = timed_plan
        return self

    def _wrap(self, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            q_length = kwargs.get("q_length", args[1] if len(args) > 1 else 1)
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                if int(q_length) > 1:  # a prompt pass; decoding steps get the stock causal mask
                    self.calls += 1
                    self.seconds += self.now() - start

        return timed

    def __exit__(self, *exc) -> None:
        blocked.cached_plan = self._plan
        for name in self._names:
            del ALL_MASK_ATTENTION_FUNCTIONS[name]  # drops our local override; the registered builder stays


def measure(
    model,
    inputs: dict[str, torch.Tensor],
    variant: Variant,
    *,
    new_tokens: int,
    backend: str = "auto",
    clock: str = "wall",
) -> dict[str, float | None]:
    """One generate() call of ``new_tokens`` (>= 2) tokens under ``variant``: its figures (see module doc).

    ``clock``: ``wall`` (elapsed time) or ``cpu`` (CPU time of the whole process, all threads: on a
    shared machine it leaves out the time spent waiting for a core).
    """
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2 to separate the prompt pass from decoding")
    device = inputs["input_ids"].device
    now = CLOCKS[clock]
    steps = _Clock(now)
    with apply(model, variant.policy, merge=variant.merge, backend=backend), _MaskSpy(now) as spy:
        with PeakMemory(device) as mem:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = now()
            model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([steps]),
            )
    stamps = steps.stamps
    prefill = stamps[0] - start
    return {
        "prefill_ms": prefill * 1e3,
        "decode_ms_per_token": (stamps[-1] - stamps[0]) * 1e3 / (len(stamps) - 1),
        "peak_mem_mb": mem.mb,
        "mask_ms": spy.seconds * 1e3,
        "plan_ms": spy.plan_seconds * 1e3,
        "mask_share": (spy.seconds + spy.plan_seconds) / prefill if prefill > 0 else None,
        "mask_calls": spy.calls,
    }


def attended_pairs(policy: str, layout: TokenLayout, rows_per_chunk: int = 1024) -> int:
    """Number of allowed ``(query, key)`` pairs of ``policy`` on ``layout``, counted a row chunk at a time."""
    mod = allowed_mod(policy, layout)
    total = 0
    b = torch.arange(layout.batch_size)[:, None, None]
    h = torch.zeros((), dtype=torch.long)
    kv = torch.arange(layout.length)[None, None, :]
    for start in range(0, layout.length, rows_per_chunk):
        q = torch.arange(start, min(start + rows_per_chunk, layout.length))[None, :, None]
        total += int(mod(b, h, q, kv).sum())
    return total


@dataclass
class BenchSettings:
    """What to run: variants, repeats and the generation length (the prompt comes with the inputs)."""

    policies: Sequence[str] = BENCH_POLICIES
    merges: Sequence[Merge | str | None] = (None, "kernel")
    new_tokens: int = 16
    repeats: int = 3
    backend: str = "auto"
    kernel_bench: bool = True
    warmup: bool = True
    clock: str = "auto"
    exact_rss: bool = True  # CPU: fix glibc's mmap threshold for the rest of the process (memory.py)
    extra: dict[str, Any] = field(default_factory=dict)


def _summary(samples: list[float | None]) -> tuple[float | None, float | None, float | None]:
    values = [s for s in samples if s is not None]
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def run_bench(
    model, inputs: dict[str, torch.Tensor], settings: BenchSettings, *, progress: bool = True
) -> list[dict]:
    """Measure every variant on ``model`` with ``inputs`` (``input_ids``/``attention_mask`` ``[B, L]``).

    Returns one record per variant (``causal`` first): ``policy``, ``merge`` (None or its
    :func:`~futuremask.merge_spec.merge_spec` word: ``kernel``, ``kernel-k5``), the
    median / min / max of each metric over ``settings.repeats`` rounds, and ``*_ratio`` = median /
    median of ``causal``. Also ``pairs_ratio`` (attended pairs / causal pairs), ``mask_share`` (the median
    over rounds of mask building + blocked-SDPA planning time / prefill time) and ``mask_calls_per_prefill``, plus
    ``settings.extra``.
    """
    runs = variants(settings.policies, settings.merges)
    device = inputs["input_ids"].device
    clock = settings.clock if settings.clock != "auto" else ("cpu" if device.type == "cpu" else "wall")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose 'auto', 'wall' or 'cpu'")
    if device.type == "cpu" and settings.exact_rss:
        exact_rss_accounting()
    config = model.config
    layout = TokenLayout.from_inputs(
        config, input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
    )
    causal_pairs = attended_pairs("causal", layout)
    timer = attention_timer(model, layout, now=CLOCKS[clock]) if settings.kernel_bench else None
    samples: dict[Variant, dict[str, list]] = {v: {} for v in runs}
    total = len(runs) * settings.repeats * (2 if timer else 1)
    bar = tqdm(total=total, desc="bench", unit="run", disable=not progress, dynamic_ncols=True)
    if settings.warmup:
        bar.set_postfix_str("warm-up")
        measure(model, inputs, Variant("causal"), new_tokens=2, backend=settings.backend, clock=clock)
        if timer:
            timer(Variant("causal"))
    for r in range(settings.repeats):
        order = runs[r % len(runs) :] + runs[: r % len(runs)]
        for v in order:
            bar.set_postfix_str(f"round {r + 1}/{settings.repeats} {v.label}")
            figures = measure(
                model, inputs, v, new_tokens=settings.new_tokens, backend=settings.backend, clock=clock
            )
            for key, value in figures.items():
                samples[v].setdefault(key, []).append(value)
            bar.update()
        if timer:
            for v in order:
                bar.set_postfix_str(f"round {r + 1}/{settings.repeats} kernel {v.label}")
                for key, value in timer(v).items():
                    samples[v].setdefault(key, []).append(value)
                bar.update()
    bar.close()
    return _records(runs, samples, layout, causal_pairs, settings, inputs, clock)


def _records(runs, samples, layout, causal_pairs, settings, inputs, clock) -> list[dict]:
    records = []
    for v in runs:
        rec: dict[str, Any] = {"policy": v.policy, "merge": merge_spec(v.merge), "label": v.label}
        for metric in METRICS:
            med, lo, hi = _summary(samples[v].get(metric, []))
            rec[metric], rec[metric + "_min"], rec[metric + "_max"] = med, lo, hi
        rec["mask_ms"] = _summary(samples[v]["mask_ms"])[0]
        rec["plan_ms"] = _summary(samples[v]["plan_ms"])[0]
        rec["mask_share"] = _summary(samples[v]["mask_share"])[0]  # the median of each round's share
        rec["mask_calls_per_prefill"] = max(samples[v]["mask_calls"])
        rec["pairs_ratio"] = attended_pairs(v.policy, layout) / causal_pairs
        rec["samples"] = {k: list(x) for k, x in samples[v].items()}
        records.append(rec)
    base = records[0]
    for rec in records:
        for metric, ratio in (
            ("prefill_ms", "prefill_ratio"),
            ("decode_ms_per_token", "decode_ratio"),
            ("peak_mem_mb", "mem_ratio"),
            ("attn_ms", "attn_ratio"),
        ):
            num, den = rec[metric], base[metric]
            rec[ratio] = num / den if num is not None and den else None
        rec["prompt_tokens"] = layout.length
        rec["visual_tokens"] = int(layout.visual[0].sum())
        rec["batch"] = layout.batch_size
        rec["new_tokens"] = settings.new_tokens
        rec["repeats"] = settings.repeats
        rec["device"] = str(inputs["input_ids"].device)
        rec["clock"] = clock
        rec.update(settings.extra)
    return records


def settings_dict(settings: BenchSettings) -> dict[str, Any]:
    """The settings as plain JSON-ready values."""
    out = asdict(settings)
    out["policies"] = list(settings.policies)
    out["merges"] = [merge_spec(Merge.coerce(m)) for m in settings.merges]
    return out
