"""Checks that the causal contract holds on a user's own checkpoint: ``futuremask verify``.

Each check runs the model a few times on a sample prompt and compares tensors that a correct
implementation makes identical (up to ``atol`` relative to the logits' scale):

* ``causal``: ``apply(model, "causal")`` reproduces the untouched model, and ``remove()`` restores it;
* ``generate``: ``generate()`` under a policy equals an explicit prefill under the policy followed by
  causal decoding of the plain model (nothing applied) on the prefill's KV cache;
* ``text-causal``: changing a later text token leaves every earlier text row unchanged after the
  first layer, and every layer of the text rows before the first image (not for ``mma``, whose
  text queries do see later visual tokens);
* ``continuation``: changing a scored continuation leaves every prompt row (visual rows included)
  unchanged at every layer, and ``continuation_logprob`` scores its first token with the prefill's
  next-token distribution;
* ``batch``: the same prompt alone and left-padded in a batch with a longer prompt generates with
  the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import DEFAULT_PROMPT, sample_image, sample_inputs
from .hf import apply, continuation_logprob, with_continuation
from .layout import TokenLayout, visual_token_ids
from .merge import Merge
from .merge_spec import merge_label
from .policies import get_policy, policy_names

CHECKS = {
    "causal": "causal reproduces the untouched model",
    "generate": "generate() = prefill + causal decode",
    "text-causal": "text queries never see the future",
    "continuation": "continuation never reaches visual rows",
    "batch": "batch and left-padding invariance",
}
NO_TEXT_CAUSAL = ("mma",)  # policies whose text queries may see later tokens by design


@dataclass(frozen=True)
class CheckResult:
    """One line of the verification table.

    Attributes:
        check: key of :data:`CHECKS`.
        policy: the policy it ran under (with ``+merge`` when a merge was on).
        status: ``"pass"``, ``"fail"`` or ``"skip"``.
        max_diff: the largest difference found (0 for a skip).
        tolerance: the largest difference accepted.
        detail: what was compared, or why it failed.
    """

    check: str
    policy: str
    status: str
    max_diff: float
    tolerance: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    @property
    def title(self) -> str:
        return CHECKS[self.check]


def _tensor_inputs(inputs: Any, model) -> dict[str, Any]:
    """Processor outputs as a dict on the model's device, floating tensors in the model's dtype."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out


def _max_diff(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    diff = 0.0
    for a, b in pairs:
        if a.numel():
            diff = max(diff, float((a.float() - b.float()).abs().max()))
    return diff


class _Verifier:
    """Holds the model, the sample inputs and the tolerance while the checks run."""

    def __init__(self, model, processor, image, prompt: str, merge: Merge | None, atol: float, backend: str,
                 max_new_tokens: int):
        self.model, self.processor = model, processor
        self.image, self.prompt = image, prompt
        self.merge, self.backend, self.atol = merge, backend, atol
        self.max_new_tokens = max_new_tokens
        self.inputs = _tensor_inputs(sample_inputs(processor, image, prompt), model)
        self.layout = TokenLayout.from_inputs(
            model.config, input_ids=self.inputs["input_ids"], attention_mask=self.inputs.get("attention_mask"),
            mm_token_type_ids=self.inputs.get("mm_token_type_ids"),
        )
        if not bool(self.layout.visual.any()):
            raise ValueError("the sample prompt has no visual tokens: the processor did not insert the image")

    # -- running the model ------------------------------------------------------------------------

    def forward(self, inputs: dict[str, Any], policy: str | None, merge: Merge | None = None, **kwargs) -> Any:
        """One forward pass, untouched (``policy=None``) or under ``policy``, with hidden states."""
        kwargs.setdefault("use_cache", False)
        with torch.no_grad():
            if policy is None:
                return self.model(**inputs, output_hidden_states=True, **kwargs)
            with apply(self.model, policy, merge=merge, backend=self.backend):
                return self.model(**inputs, output_hidden_states=True, **kwargs)

    def generate_logits(self, inputs: dict[str, Any], policy: str, merge: Merge | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sequences [B, L + n], logits [n, B, V])`` of greedy ``generate()`` under ``policy``."""
        n = self.max_new_tokens
        with apply(self.model, policy, merge=merge, backend=self.backend), torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                output_logits=True, return_dict_in_generate=True,
            )
        return out.sequences, torch.stack(out.logits)

    def tolerance(self, reference: torch.Tensor) -> float:
        return self.atol * max(1.0, float(reference.float().abs().max()))

    def result(self, check: str, policy: str, diff: float, tol: float, detail: str) -> CheckResult:
        status = "pass" if diff <= tol else "fail"
        return CheckResult(check, policy, status, diff, tol, detail)

    # -- the checks -------------------------------------------------------------------------------

    def check_causal(self, policy: str, merge: Merge | None) -> CheckResult:
        ref = self.forward(self.inputs, None)
        ours = self.forward(self.inputs, "causal")
        again = self.forward(self.inputs, None)
        pairs = [(ref.logits, ours.logits), (ref.logits, again.logits)]
        pairs += list(zip(ref.hidden_states, ours.hidden_states, strict=True))
        tol = self.tolerance(ref.logits)
        detail = f"logits and {len(ref.hidden_states)} hidden states vs the untouched model; again after remove()"
        return self.result("causal", "causal", _max_diff(pairs), tol, detail)

    def check_generate(self, policy: str, merge: Merge | None) -> CheckResult:
        inputs = self.inputs
        sequences, gen_logits = self.generate_logits(inputs, policy, merge)
        length = inputs["input_ids"].shape[1]
        with apply(self.model, policy, merge=merge, backend=self.backend), torch.no_grad():
            prefill = self.model(**inputs, use_cache=True)
        steps = [prefill.logits[:, -1]]
        rest = gen_logits.shape[0] - 1
        if rest:  # the plain model decodes on the prefill's cache; generate() only keeps positions family-correct
            call = {"input_ids": sequences[:, : length + 1]}
            for key in ("attention_mask", "mm_token_type_ids", "token_type_ids"):
                if inputs.get(key) is not None:
                    call[key] = torch.nn.functional.pad(inputs[key], (0, 1), value=int(key == "attention_mask"))
            with torch.no_grad():
                out = self.model.generate(
                    **call, past_key_values=prefill.past_key_values, max_new_tokens=rest, min_new_tokens=rest,
                    do_sample=False, num_beams=1, output_logits=True, return_dict_in_generate=True,
                )
            steps += list(out.logits)
        explicit = torch.stack(steps)
        detail = f"logits of {gen_logits.shape[0]} greedy steps vs a prefill under the policy + plain decoding on its cache"
        return self.result("generate", policy, _max_diff([(gen_logits, explicit)]), self.tolerance(explicit), detail)

    def check_text_causal(self, policy: str, merge: Merge | None) -> CheckResult:
        if get_policy(policy).name in NO_TEXT_CAUSAL:
            return CheckResult("text-causal", policy, "skip", 0.0, 0.0, "text queries of mma see later visual tokens by design")
        ids = self.inputs["input_ids"]
        visual, valid = self.layout.visual[0], self.layout.valid[0]
        text = (~visual & valid).nonzero().flatten().tolist()
        first_visual = int(visual.nonzero()[0])
        t = text[-1]
        if t < first_visual:
            return CheckResult("text-causal", policy, "skip", 0.0, 0.0, "the prompt has no text after the image")
        perturbed = dict(self.inputs)
        perturbed["input_ids"] = ids.clone()
        perturbed["input_ids"][0, t] = _other_text_token(ids, t, self.model.config)
        a = self.forward(self.inputs, policy, merge)
        b = self.forward(perturbed, policy, merge)
        rows = torch.tensor([i for i in text if i < t], dtype=torch.long)
        early = torch.tensor([i for i in text if i < first_visual], dtype=torch.long)
        pairs = [(a.hidden_states[1][0, rows], b.hidden_states[1][0, rows])]
        pairs += [(x[0, early], y[0, early]) for x, y in zip(a.hidden_states, b.hidden_states, strict=True)]
        pairs.append((a.logits[0, early], b.logits[0, early]))
        moved = _max_diff([(a.hidden_states[1][0, t], b.hidden_states[1][0, t])])
        detail = (f"token {t} changed: {_count(len(rows), 'earlier text row')} after layer 1, "
                  f"{_count(len(early), 'row')} before the image at every layer")
        result = self.result("text-causal", policy, _max_diff(pairs), self.tolerance(a.logits), detail)
        if moved == 0.0:
            return CheckResult("text-causal", policy, "fail", 0.0, result.tolerance, "changing the token changed nothing")
        return result

    def check_continuation(self, policy: str, merge: Merge | None) -> CheckResult:
        ids = self.inputs["input_ids"]
        length = ids.shape[1]
        cont_a, cont_b = _continuations(ids, self.layout, self.model.config)
        states = []
        for cont in (cont_a, cont_b):
            call = with_continuation(self.inputs, cont, torch.ones_like(cont, dtype=torch.bool), self.model.config)
            states.append(self.forward(call, policy, merge))
        a, b = states
        pairs = [(x[:, :length], y[:, :length]) for x, y in zip(a.hidden_states, b.hidden_states, strict=True)]
        pairs.append((a.logits[:, :length], b.logits[:, :length]))
        content = _max_diff(pairs)
        prefill = self.forward(self.inputs, policy, merge).logits[:, -1].float()
        scored = continuation_logprob(self.model, self.inputs, cont_a[:, :1], policy=policy, merge=merge,
                                      backend=self.backend)
        expected = torch.log_softmax(prefill, dim=-1).gather(-1, cont_a[:, :1]).squeeze(-1)
        presence = _max_diff([(a.logits[:, length - 1], prefill), (scored, expected)])
        detail = (f"prompt rows, two {cont_a.shape[1]}-token continuations: {content:.1e}; "
                  f"next-token logits and continuation_logprob vs the bare prefill: {presence:.1e}")
        return self.result("continuation", policy, max(content, presence), self.tolerance(prefill), detail)

    def check_batch(self, policy: str, merge: Merge | None) -> CheckResult:
        longer = self.prompt + " answer with one word , please , in the color of the circle ."
        batch = _tensor_inputs(sample_inputs(self.processor, self.image, self.prompt, extra_prompts=[longer]), self.model)
        pad = int((batch["attention_mask"][0] == 0).sum()) if "attention_mask" in batch else 0
        if pad == 0:
            return CheckResult("batch", policy, "skip", 0.0, 0.0, "the two sample prompts have the same length")
        single_b = _tensor_inputs(sample_inputs(self.processor, self.image, longer), self.model)
        _, batched = self.generate_logits(batch, policy, merge)
        _, alone_a = self.generate_logits(self.inputs, policy, merge)
        _, alone_b = self.generate_logits(single_b, policy, merge)
        pairs = [(batched[:, 0], alone_a[:, 0]), (batched[:, 1], alone_b[:, 0])]
        detail = f"greedy logits of 2 prompts alone vs in one batch ({pad} left-padding tokens)"
        return self.result("batch", policy, _max_diff(pairs), self.tolerance(alone_a), detail)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _other_text_token(ids: torch.Tensor, t: int, config) -> int:
    """A text token id different from ``ids[0, t]`` (another token of the prompt, else a neighbour id)."""
    visual = set(visual_token_ids(config))
    for i in range(t - 1, -1, -1):
        candidate = int(ids[0, i])
        if candidate != int(ids[0, t]) and candidate not in visual:
            return candidate
    candidate = int(ids[0, t]) + 1
    while candidate in visual:
        candidate += 1
    return candidate


def _continuations(ids: torch.Tensor, layout: TokenLayout, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different 3-token continuations ``[B, 3]`` built from the prompt's own text tokens."""
    text = [int(x) for x in ids[0][(~layout.visual[0]) & layout.valid[0]].tolist()]
    distinct = list(dict.fromkeys(text)) or [int(ids[0, -1])]
    while len(distinct) < 2:
        distinct.append(distinct[0] + 1)
    a = [distinct[i % len(distinct)] for i in range(3)]
    b = [distinct[(i + 1) % len(distinct)] for i in range(3)]
    rows = ids.shape[0]
    as_tensor = lambda xs: torch.tensor(xs, device=ids.device).expand(rows, -1)  # noqa: E731
    return as_tensor(a), as_tensor(b)


def verify(
    model,
    processor,
    policies: Sequence[str] | None = None,
    *,
    merge: Merge | str | None = None,
    image: Any = None,
    prompt: str | None = None,
    atol: float | None = None,
    backend: str = "auto",
    max_new_tokens: int = 3,
    progress: bool = True,
) -> list[CheckResult]:
    """Run every check on ``model`` for ``causal`` and each of ``policies``.

    Args:
        model: a transformers VLM (``AutoModelForImageTextToText``), nothing applied to it.
        processor: its processor (tokenizer + image processor).
        policies: names from :data:`futuremask.POLICIES` (default: all of them).
        merge: also fold the future into the sink (:class:`Merge` or kind name) for the non-causal policies.
        image: a PIL image (default: a drawn picture); prompt: the question (default: a sample one).
        atol: accepted difference relative to ``max(1, max |logits|)`` (default 1e-4 in float32, 3e-2 otherwise).
        backend: as for :func:`futuremask.apply`.
        max_new_tokens: greedy steps compared by the generation checks.

    Returns:
        One :class:`CheckResult` per (check, policy); ``all(r.passed for r in results)`` means it all holds.
    """
    if getattr(model, "_futuremask", None) is not None:
        raise RuntimeError("verify needs the untouched model: remove() the futuremask handle applied to it first")
    check_settings(atol, max_new_tokens)
    merge = Merge.coerce(merge)
    names = ["causal"] + [get_policy(p).name for p in (policies or policy_names()) if get_policy(p).name != "causal"]
    names = list(dict.fromkeys(names))
    dtype = next(model.parameters()).dtype
    atol = atol if atol is not None else (1e-4 if dtype == torch.float32 else 3e-2)
    image = sample_image() if image is None else image
    checker = _Verifier(model, processor, image, prompt or DEFAULT_PROMPT, merge, atol, backend, max_new_tokens)
    plan: list[tuple[Callable[[str, Merge | None], CheckResult], str, Merge | None]] = [(checker.check_causal, "causal", None)]
    for name in names:
        run_merge = merge if name != "causal" else None
        for fn in (checker.check_generate, checker.check_text_causal, checker.check_continuation, checker.check_batch):
            plan.append((fn, name, run_merge))
    results = []
    for fn, name, run_merge in tqdm(plan, desc="futuremask verify", disable=not progress, leave=False):
        label = merge_label(name, run_merge)
        try:
            result = fn(name, run_merge)
        except Exception as err:  # a crash is a failed check, reported on its line
            check = fn.__name__.removeprefix("check_").replace("_", "-")
            result = CheckResult(check, label, "fail", float("nan"), float("nan"), f"error: {type(err).__name__}: {err}")
        results.append(CheckResult(result.check, label, result.status, result.max_diff, result.tolerance, result.detail))
    return results


def check_settings(atol: float | None, max_new_tokens: int) -> None:
    """Refuse a tolerance below 0 (or not finite) and fewer than one greedy step, before any model work."""
    if atol is not None and not (math.isfinite(atol) and atol >= 0):
        raise ValueError(f"--atol must be a finite number >= 0 (a relative tolerance), got {atol}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1 (greedy steps compared), got {max_new_tokens}")


def format_table(results: Sequence[CheckResult]) -> str:
    """The results as a fixed-width text table, one line per check, with a summary line."""
    rows = [("check", "policy", "result", "max diff", "tolerance", "detail")]
    for r in results:
        rows.append((r.title, r.policy, r.status.upper(), f"{r.max_diff:.2e}", f"{r.tolerance:.2e}", r.detail))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5] for row in rows]
    lines.insert(1, "-" * (sum(widths) + 2 * 5 + len(rows[0][5])))
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed}/{len(results)} checks passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)


__all__ = ["CHECKS", "CheckResult", "check_settings", "format_table", "verify"]
