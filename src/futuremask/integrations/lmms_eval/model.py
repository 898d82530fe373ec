"""The lmms-eval model ``futuremask``: any VLM futuremask supports, under a mask policy (docs/lmms-eval.md).

Two classes, as lmms-eval's registry wants them: :class:`FutureMaskChat` (the default; reads each
task's ``doc_to_messages``) and :class:`FutureMaskSimple` (``--force_simple``; ``doc_to_visual`` +
the text context, the only kind lmms-eval sends ``multiple_choice`` / ``loglikelihood`` tasks to).

* ``generate_until``: left-padded batches of ``batch_size`` (same ``gen_kwargs`` and image count),
  ``model.generate`` under ``fm.apply``; the answer is cut at the first ``until`` string.
* ``loglikelihood``: ``(loss, is_greedy)``: the loss is the continuation's summed negative log-likelihood,
  ``-fm.continuation_logprob``, because lmms-eval 0.7.3's ``multiple_choice`` picks the choice with the
  *smallest* value (``np.argmin``; its own models return a loss); ``is_greedy`` from one greedy
  ``generate`` per distinct prompt.
* Nothing is swallowed: an error (``fm.PromptSplitError``, a bad image, ...) stops the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from tqdm.auto import tqdm

from ...checkpoint import load_checkpoint
from ...eval.prompt_styles import batch_inputs
from ...hf import apply, continuation_logprob
from ...layers import check_layers
from . import messages as msg
from . import options

TESTED_LMMS_EVAL = "0.7.3"  # the work-arounds below (Scored, the loss sign) are for this version
if version("lmms-eval") != TESTED_LMMS_EVAL:
    logging.getLogger(__name__).warning("futuremask: the lmms-eval plugin is tested with lmms-eval==%s, not %s",
                                        TESTED_LMMS_EVAL, version("lmms-eval"))


class Scored(GenerationResult):
    """A loglikelihood answer, ``(loss, is_greedy)``; unpacks like the tuple lmms-eval documents.

    lmms-eval 0.7.3's ``unwrap_generation_output`` turns a plain tuple into its ``str()``, which breaks
    every ``multiple_choice`` task; a ``GenerationResult`` passes its ``text`` (here the tuple) through.
    """

    def __init__(self, loss: float, is_greedy: bool):
        super().__init__(text=(loss, is_greedy))

    def __iter__(self) -> Iterator:
        return iter(self.text)

    def __getitem__(self, i: int) -> Any:
        return self.text[i]

    def __len__(self) -> int:
        return 2


class _FutureMask(lmms):
    """Shared loading, batching, generation and scoring; the subclasses turn requests into messages."""

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.args = options.parse(model_args)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("futuremask: the lmms-eval model runs in one process; launch lmms-eval without "
                             "accelerate/torchrun (WORLD_SIZE > 1)")
        self.model, self.processor = load_checkpoint(self.args.pretrained, dtype=self.args.dtype,
                                                     device=self.args.device)
        try:
            check_layers(self.model, self.args.layers)
        except ValueError as err:
            raise ValueError(f"futuremask: {err} (model_args layers=)") from err
        self.batch_size = self.args.batch_size
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> _FutureMask:
        """lmms-eval's constructor: ``--model_args`` plus its own ``--batch_size`` / ``--device``."""
        return cls(**options.combine(options.split(arg_string), additional_config or {}))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _apply(self):
        return apply(self.model, self.args.policy, merge=self.args.merge, backend=self.args.backend,
                     layers=self.args.layers)

    def _batches(self, groups: Sequence[Any], image_counts: Sequence[int]) -> list[list[int]]:
        """Indices grouped by ``groups`` (first-seen order: a batch shares its group), each group ordered by
        ``image_counts`` (request order among equal counts) and cut into batches of ``batch_size``, so only a
        group's last batch is short."""
        members: dict[Any, list[int]] = {}
        for i, key in enumerate(groups):
            members.setdefault(key, []).append(i)
        size, out = self.batch_size, []
        for group in members.values():
            ordered = sorted(group, key=lambda i: image_counts[i])
            out += [ordered[i:i + size] for i in range(0, len(ordered), size)]
        return out

    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    # --- generation ---------------------------------------------------------------------------------

    def _generate(self, chats: Sequence[Sequence[dict]], gen_kwargs: Sequence[dict]) -> list[str]:
        """Answers to ``chats`` (lmms-eval messages), each with its task's ``gen_kwargs``, in order."""
        rendered = [msg.render(self.processor, c) for c in chats]
        answers: list[str] = [""] * len(chats)
        bar = tqdm(total=len(chats), desc="futuremask generate", disable=self.rank != 0)
        for batch in self._batches([repr(sorted(g.items())) for g in gen_kwargs], [len(im) for _, im in rendered]):
            kwargs, until = msg.generation(gen_kwargs[batch[0]])
            inputs = batch_inputs(self.model, self.processor, [rendered[i][0] for i in batch],
                                  [rendered[i][1] for i in batch])
            with self._apply(), torch.no_grad():
                out = self.model.generate(**inputs, **kwargs)
            texts = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                answers[i] = msg.cut(text, until)
            bar.update(len(batch))
        bar.close()
        return answers

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("futuremask: multi-round generation (generate_until_multi_round) is not "
                                  "supported by the futuremask lmms-eval model")

    # --- scoring ------------------------------------------------------------------------------------

    def _score(self, chats: Sequence[Sequence[dict]], continuations: Sequence[str],
               prompt_keys: Sequence[Any]) -> list[Scored]:
        """``(-sum log p(continuation | chat), is_greedy)`` per request; ``prompt_keys`` name equal prompts."""
        rendered = [msg.render(self.processor, c) for c in chats]
        conts = [msg.continuation_ids(self.tokenizer, text, c) for (text, _), c in zip(rendered, continuations, strict=True)]
        results: list[Scored | None] = [None] * len(chats)
        bar = tqdm(total=len(chats), desc="futuremask loglikelihood", disable=self.rank != 0)
        for batch in self._batches([None] * len(rendered), [len(images) for _, images in rendered]):
            texts, images = [rendered[i][0] for i in batch], [rendered[i][1] for i in batch]
            inputs = batch_inputs(self.model, self.processor, texts, images)
            logprobs = continuation_logprob(self.model, inputs, [conts[i] for i in batch], policy=self.args.policy,
                                            merge=self.args.merge, backend=self.args.backend, layers=self.args.layers)
            greedy = self._greedy(batch, texts, images, conts, prompt_keys)
            for i, lp in zip(batch, logprobs.tolist(), strict=True):
                results[i] = Scored(-lp, greedy[i])
            bar.update(len(batch))
        bar.close()
        return results

    def _greedy(self, batch, texts, images, conts, prompt_keys) -> dict[int, bool]:
        """Whether greedy decoding under the policy yields each continuation (one generate per distinct prompt)."""
        first: dict[Any, int] = {}
        for pos, i in enumerate(batch):
            first.setdefault(prompt_keys[i], pos)
        rows = list(first.values())
        inputs = batch_inputs(self.model, self.processor, [texts[p] for p in rows], [images[p] for p in rows])
        width = max(len(conts[i]) for i in batch)
        with self._apply(), torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=width, do_sample=False, num_beams=1)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        row_of = {key: r for r, key in enumerate(first)}
        return {i: new[row_of[prompt_keys[i]]][: len(conts[i])] == conts[i] for i in batch}


class FutureMaskChat(_FutureMask):
    """``--model futuremask``: chat tasks (``doc_to_messages``). Loglikelihood tasks need ``--force_simple``."""

    is_simple = False

    def generate_until(self, requests) -> list[str]:
        chats, gen_kwargs = [], []
        for req in requests:
            _ctx, doc_to_messages, kwargs, doc_id, task, split = req.args
            chats.append(doc_to_messages(self._doc(task, split, doc_id)))
            gen_kwargs.append(kwargs)
        return self._generate(chats, gen_kwargs)

    def loglikelihood(self, requests) -> list[Scored]:
        raise NotImplementedError("futuremask: lmms-eval sends loglikelihood / multiple_choice tasks to simple "
                                  "models only; add --force_simple to the lmms-eval command")


def _continuation(target: Any, doc: dict, task: str) -> str:
    """The text a loglikelihood request scores: ``multiple_choice`` sends it, ``output_type: loglikelihood``
    sends the task's ``doc_to_target`` (lmms-eval 0.7.3), applied here to the document as lmms-eval's own
    models do (no delimiter is added: a leading space belongs in ``doc_to_target``)."""
    text = target(doc) if callable(target) else target
    if not isinstance(text, str):
        raise ValueError(f"futuremask: task {task!r}: a loglikelihood continuation must be text, but doc_to_target "
                         f"gave {type(text).__name__} {text!r}; make doc_to_target return the answer's text")
    return text


class FutureMaskSimple(_FutureMask):
    """``--model futuremask --force_simple``: the task's images, then its text context, in one user turn."""

    is_simple = True

    def _chat(self, ctx: str, doc_to_visual, doc_id: int, task: str, split: str) -> list[dict]:
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else None
        return msg.user_turn(visuals, ctx)

    def generate_until(self, requests) -> list[str]:
        chats, gen_kwargs = [], []
        for req in requests:
            ctx, kwargs, doc_to_visual, doc_id, task, split = req.args
            chats.append(self._chat(ctx, doc_to_visual, doc_id, task, split))
            gen_kwargs.append(kwargs)
        return self._generate(chats, gen_kwargs)

    def loglikelihood(self, requests) -> list[Scored]:
        chats, continuations, keys = [], [], []
        for req in requests:
            if len(req.args) != 6:
                raise NotImplementedError("futuremask: loglikelihood without a document (acc_mutual_info's "
                                          "unconditional scores) is not supported")
            ctx, continuation, doc_to_visual, doc_id, task, split = req.args
            chats.append(self._chat(ctx, doc_to_visual, doc_id, task, split))
            continuations.append(_continuation(continuation, self._doc(task, split, doc_id), task))
            keys.append((task, split, doc_id, ctx))
        return self._score(chats, continuations, keys)


__all__ = ["FutureMaskChat", "FutureMaskSimple", "Scored"]
