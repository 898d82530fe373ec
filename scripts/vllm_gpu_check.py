"""GPU parity and timing of futuremask's experimental CUDA backend (vllm 0.33.0); run when a GPU is lent.

    bash scripts/setup-vllm.sh --cuda
    .venv-vllm/bin/python scripts/vllm_gpu_check.py --out gpu-check.json      # about 5 minutes on one GPU

For every case of the CPU suite (tests-vllm/cases.py: each policy, future_v2v + lse, mma + kernel) it
serves the suite's tiny LLaVA and its batch of mixed prompts on the GPU (float16: FlashAttention has
no float32) and compares prompt log-probs and greedy tokens with ``fm.apply`` on the Hugging Face
model (float32, CPU, each prompt alone), and with the causal reference: a case passes when every
prompt is within ``--tol`` of its policy's reference and, on prompts with images, nearer to it than to
causal. Then it times a larger batch under each case against causal. Exit 1 when a case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # futuremask reads the V1 runner's input batch
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests-vllm"))

import torch  # noqa: E402
from cases import CASES, MIXED, NEW_TOKENS, requests, served  # noqa: E402
from conftest import close, make_engine, save_tiny  # noqa: E402
from vllm import SamplingParams  # noqa: E402

CAUSAL = ("causal", None)


def compare(outputs, want, causal) -> list[dict]:
    """Per prompt: max |log-prob difference| to the policy's and to causal's reference; tokens equal."""
    rows = []
    for (text, images), out, ref, stock in zip(MIXED, outputs, want, causal, strict=True):
        ids, prompt_lp, gen, gen_lp = served(out)
        assert ids == ref[0], f"prompt ids differ from the processor's: {text!r}"
        rows.append({
            "images": len(images),
            "prompt_vs_policy": (prompt_lp - ref[1]).abs().max().item(),
            "prompt_vs_causal": (prompt_lp - stock[1]).abs().max().item(),
            "reference_gap": (ref[1] - stock[1]).abs().max().item(),
            "tokens_equal": gen == ref[2],
            "first_token_logprob_diff": abs(gen_lp[0].item() - ref[3][0].item()),
        })
    return rows


def verdict(rows: list[dict], tol: float, causal_case: bool) -> str:
    if any(r["prompt_vs_policy"] > tol or not r["tokens_equal"] for r in rows):
        return "FAIL"
    images = [r for r in rows if r["images"]]
    if causal_case:
        return "PASS"
    if all(r["reference_gap"] < 2 * tol for r in images):
        return "INCONCLUSIVE (the policy moves the reference less than 2 x tol)"
    nearer = all(r["prompt_vs_policy"] < r["prompt_vs_causal"] for r in images if r["reference_gap"] >= 2 * tol)
    return "PASS" if nearer else "FAIL (nearer to causal)"


def timed(llm, copies: int, new_tokens: int) -> float:
    """Seconds to serve ``copies`` x the mixed batch, ``new_tokens`` each (after the parity run warmed up)."""
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    llm.generate(requests(MIXED * copies), params, use_tqdm=False)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--tol", type=float, default=2e-2, help="max |prompt log-prob difference| (default 2e-2)")
    parser.add_argument("--copies", type=int, default=32, help="timing batch: copies of the 3 mixed prompts")
    parser.add_argument("--new-tokens", type=int, default=64, help="timing: tokens generated per request")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("vllm_gpu_check.py: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    report = {"gpu": torch.cuda.get_device_name(), "dtype": args.dtype, "tol": args.tol, "cases": {}}
    with tempfile.TemporaryDirectory() as path:
        refs = save_tiny(path)  # before any engine: vLLM's Transformers backend patches transformers
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, prompt_logprobs=0, logprobs=0,
                                ignore_eos=True)
        for policy, merge in [CAUSAL, *CASES]:
            name = f"{policy}-{merge.kind if merge else 'none'}"
            llm = make_engine(path, policy, merge, dtype=args.dtype, max_num_seqs=4 * args.copies)
            try:
                rows = compare(llm.generate(requests(), params, use_tqdm=False), refs[(policy, merge)],
                               refs[CAUSAL])
                seconds = timed(llm, args.copies, args.new_tokens)
            finally:
                close(llm)
            report["cases"][name] = {"verdict": verdict(rows, args.tol, (policy, merge) == CAUSAL),
                                     "prompts": rows, "seconds": seconds}
            print(f"{name:24s} {report['cases'][name]['verdict']:12s} max prompt diff "
                  f"{max(r['prompt_vs_policy'] for r in rows):.2e}  time {seconds:.2f} s", flush=True)
    causal_s = report["cases"]["causal-none"]["seconds"]
    for case in report["cases"].values():
        case["time_vs_causal"] = case["seconds"] / causal_s
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: (v["verdict"], round(v["time_vs_causal"], 2)) for k, v in report["cases"].items()}, indent=1))
    return 1 if any(v["verdict"].startswith("FAIL") for v in report["cases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
