"""The SFT collator: prompt/answer split, labels, padding on either side, image batching, MileBench examples."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import futuremask as fm
from futuremask.eval.data import load_tasks
from futuremask.eval.demo import DEMO_WORDS, generate_demo_data
from futuremask.eval.prompts import build_prompt, count_image_tokens
from futuremask.tiny import tiny_llava
from futuremask.train.collator import SFTCollator
from futuremask.train.data import example_words, milebench_examples


@pytest.fixture(scope="module")
def tiny():
    return tiny_llava(seed=5)


def _examples():
    red, blue, green = (Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0)))
    return [
        {"content": [{"type": "image"}, {"type": "text", "text": "what color is image 1 ?"}],
         "images": [red], "answer": "red"},
        {"content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "what color is image 2 ?"}],
         "images": [blue, green], "answer": "green circle"},
    ]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_layout(tiny, side):
    model, proc = tiny
    tok = proc.tokenizer
    examples = _examples()
    batch = SFTCollator(proc, padding_side=side)(examples)
    width = batch["input_ids"].shape[1]
    for i, ex in enumerate(examples):
        # independent rendering: the prompt text by the template, the answer words looked up one by one
        prompt_text = proc.apply_chat_template([{"role": "user", "content": ex["content"]}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = proc(text=[prompt_text], images=ex["images"], return_tensors="pt")["input_ids"][0].tolist()
        answer_ids = [tok.convert_tokens_to_ids(w) for w in ex["answer"].split()] + [tok.eos_token_id]
        n = len(prompt_ids) + len(answer_ids)
        row = slice(0, n) if side == "right" else slice(width - n, width)
        pad = slice(n, width) if side == "right" else slice(0, width - n)
        assert batch["input_ids"][i, row].tolist() == prompt_ids + answer_ids
        assert batch["labels"][i, row].tolist() == [-100] * len(prompt_ids) + answer_ids
        assert batch["attention_mask"][i, row].eq(1).all() and batch["attention_mask"][i, pad].eq(0).all()
        assert batch["labels"][i, pad].eq(-100).all() and batch["input_ids"][i, pad].eq(tok.pad_token_id).all()
    # images: all rows' images in row order, as the processor preprocesses them one by one
    singles = [proc.image_processor(images=[im], return_tensors="pt")["pixel_values"][0]
               for ex in examples for im in ex["images"]]
    torch.testing.assert_close(batch["pixel_values"], torch.stack(singles))


def test_padding_side_does_not_change_the_loss(tiny):
    model, proc = tiny
    examples = _examples()
    with fm.apply(model, "mma"), torch.no_grad():
        left = model(**SFTCollator(proc, padding_side="left")(examples)).loss
        right = model(**SFTCollator(proc, padding_side="right")(examples)).loss
        singles = [model(**SFTCollator(proc)([ex])).loss for ex in examples]
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)
    # the batch loss is the mean over supervised tokens: 2 tokens of row 0 and 3 of row 1
    torch.testing.assert_close(right, (2 * singles[0] + 3 * singles[1]) / 5, rtol=1e-5, atol=1e-5)


def test_preencoded_rows_and_errors(tiny):
    _, proc = tiny
    col = SFTCollator(proc)
    examples = _examples()
    direct = col(examples)
    again = col([col.encode(ex) for ex in examples])
    assert direct.keys() == again.keys()
    assert all(torch.equal(direct[k], again[k]) for k in direct)
    with pytest.raises(ValueError, match="2 image parts but 1 images"):
        col.encode({**examples[1], "images": examples[1]["images"][:1]})
    with pytest.raises(ValueError, match="max_length=10"):
        SFTCollator(proc, max_length=10).encode(examples[0])
    with pytest.raises(KeyError, match="'answer'"):
        col.encode({"prompt": "x", "images": []})
    with pytest.raises(ValueError, match="padding_side"):
        SFTCollator(proc, padding_side="middle")


def test_milebench_examples_match_eval_prompts(tmp_path):
    _, proc = tiny_llava(words=list(DEMO_WORDS))
    generate_demo_data(tmp_path, samples_per_task=2, seed=3, tasks=["DemoColor", "DemoChange"])
    examples = milebench_examples(tmp_path, proc)
    tasks = load_tasks(tmp_path)
    samples = [s for t in tasks for s in t.samples]
    assert len(examples) == len(samples) == 4
    first_image = Image.open(samples[0].image_paths[0]).convert("RGB")
    per_image = count_image_tokens(proc, first_image)
    assert per_image == 16
    for ex, sample in zip(examples, samples, strict=True):
        prompt = build_prompt(sample, proc, 4096, per_image)
        assert ex["prompt"] == prompt.text and ex["answer"] == sample.response and ex["task"] == sample.task
        assert len(ex["images"]) == len(sample.image_paths)
        assert ex["prompt"].count("<image>") == len(sample.image_paths)
    batch = SFTCollator(proc)(examples)
    assert batch["pixel_values"].shape[0] == sum(len(s.image_paths) for s in samples)
    n_img = (batch["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<image>")).sum().item()
    assert n_img == 16 * batch["pixel_values"].shape[0]
    assert "<unk>" not in proc.tokenizer.convert_ids_to_tokens(batch["input_ids"].flatten().tolist())
    assert set(example_words(examples)) <= set(proc.tokenizer.get_vocab())


def test_bos_exactly_once_as_the_runner_adds_it():
    from tokenizers.processors import TemplateProcessing

    from futuremask.tiny import CHAT_TEMPLATE

    _, proc = tiny_llava(seed=6)
    tok = proc.tokenizer
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    example = _examples()[0]
    for template in (CHAT_TEMPLATE, "<s> " + CHAT_TEMPLATE):  # a template without, then with, its own BOS
        proc.chat_template = template
        ids = SFTCollator(proc).encode(example)["input_ids"].tolist()
        assert ids[0] == bos and ids.count(bos) == 1, template[:5]
