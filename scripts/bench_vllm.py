"""Prefill and decode time of futuremask's vLLM backend against the stock engine, side by side in one run.

    flock /tmp/heavy.lock env PYTHONPATH=$PWD/src .venv-vllm/bin/python scripts/bench_vllm.py \
        --lengths 1024 4096 8192 --rounds 3 --out bench-vllm.json

A tiny random LLaVA (head_dim 32, 256 tokens per image) serves one prompt per length, about half image
tokens, interleaved with text. Variants: ``stock`` (vLLM with no general plugin, ``VLLM_PLUGINS=``),
``causal`` (the plugin loaded, no policy) and each policy. Each variant runs in its own process (an
engine per length), all with chunked prefill and prefix caching off. Prefill = wall time of a request
with ``max_tokens=1``; a decode step = (time with ``1 + steps`` tokens - prefill time) / steps; the
median of ``--rounds`` rounds after one warm-up. ``pairs`` is the policy's attended (query, key) pairs
over causal's on the same prompt (:func:`futuremask.bench.run.attended_pairs`), the prefill target's
reference (prefill ratio <= pairs x 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests-vllm"))

IMAGE_TOKENS = 256
WORDS = "what color is the circle ?".split()
VARIANTS = ("stock", "causal", "future", "mma")


def prompt(length: int) -> tuple[str, int]:
    """``(text, image count)``: images of :data:`IMAGE_TOKENS` tokens, each followed by as many text words."""
    images = max(1, length // (2 * IMAGE_TOKENS))
    text_words = (length - images * IMAGE_TOKENS) // images
    chunk = " ".join(WORDS[i % len(WORDS)] for i in range(text_words))
    return "USER: " + " ".join(f"<image> {chunk}" for _ in range(images)) + "\nASSISTANT:", images


def save_model(path: str, max_len: int) -> None:
    from futuremask.tiny import tiny_llava

    model, processor = tiny_llava(hidden_size=128, num_heads=4, num_kv_heads=2, vision_hidden_size=64,
                                  image_size=128, patch_size=8, max_positions=max_len, seed=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def pairs_ratio(path: str, length: int) -> dict[str, float]:
    """Per policy variant: attended pairs over causal's on the prompt of ``length``."""
    from cases import draw_image
    from transformers import AutoConfig, AutoProcessor

    from futuremask.bench.run import attended_pairs
    from futuremask.layout import TokenLayout

    text, images = prompt(length)
    processor = AutoProcessor.from_pretrained(path)
    ids = processor(text=[text], images=[draw_image(i, 128) for i in range(images)], return_tensors="pt")["input_ids"]
    layout = TokenLayout.from_inputs(AutoConfig.from_pretrained(path), input_ids=ids)
    causal = attended_pairs("causal", layout)
    return {"tokens": ids.shape[1], **{v: attended_pairs("causal" if v == "stock" else v, layout) / causal
                                        for v in VARIANTS}}


def timed(llm, request: dict, tokens: int) -> float:
    """Seconds of ``llm.generate`` on ``request`` alone for ``tokens`` greedy tokens."""
    import vllm

    params = vllm.SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0)
    start = time.perf_counter()
    llm.generate([request], params, use_tqdm=False)
    return time.perf_counter() - start


def child(path: str, variant: str, lengths: list[int], rounds: int, steps: int, max_len: int) -> dict:
    """Time ``variant`` at every length in this process."""
    import vllm
    from cases import draw_image
    from conftest import ENGINE, close

    from futuremask.integrations.vllm import engine_kwargs

    kwargs = {**ENGINE, "max_model_len": max_len, "max_num_batched_tokens": max_len, "max_num_seqs": 1,
              "kv_cache_memory_bytes": 2**30, "enable_chunked_prefill": False, "enable_prefix_caching": False,
              **engine_kwargs("causal" if variant == "stock" else variant)}
    if variant == "stock":
        kwargs.pop("hf_overrides")
    llm = vllm.LLM(model=path, **kwargs)
    result = {}
    try:
        for length in lengths:
            text, images = prompt(length)
            request = {"prompt": text, "multi_modal_data": {"image": [draw_image(i, 128) for i in range(images)]}}
            timed(llm, request, 1 + steps)  # warm-up
            prefill, decode = [], []
            for _ in range(rounds):
                p = timed(llm, request, 1)
                prefill.append(p)
                decode.append((timed(llm, request, 1 + steps) - p) / steps)
            result[length] = {"prefill_s": statistics.median(prefill), "decode_step_s": statistics.median(decode),
                              "prefill_rounds": prefill, "decode_rounds": decode}
    finally:
        close(llm)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=96, help="decode steps timed per round")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    max_len = max(args.lengths) + 512
    if args.child:
        print(json.dumps(child(*args.child, args.lengths, args.rounds, args.steps, max_len)))
        return
    with tempfile.TemporaryDirectory() as path:
        save_model(path, max_len)
        pairs = {n: pairs_ratio(path, n) for n in args.lengths}
        times = {}
        for variant in args.variants:
            env = {**os.environ, **({"VLLM_PLUGINS": ""} if variant == "stock" else {})}
            run = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", path, variant], env=env,
                                 capture_output=True, text=True, check=False)
            if run.returncode:
                sys.exit(f"{variant} failed:\n{run.stderr[-3000:]}")
            times[variant] = {int(k): v for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}
    rows = []
    for n in args.lengths:
        stock = times["stock"][n] if "stock" in times else None
        for variant, t in times.items():
            row = {"length": n, "tokens": pairs[n]["tokens"], "variant": variant, "pairs": pairs[n][variant],
                   **{k: t[n][k] for k in ("prefill_s", "decode_step_s")}}
            if stock:
                row["prefill_ratio"] = t[n]["prefill_s"] / stock["prefill_s"]
                row["decode_ratio"] = t[n]["decode_step_s"] / stock["decode_step_s"]
            rows.append(row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": rows, "times": times, "argv": sys.argv[1:]}, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
