"""``--prompt-style milebench``: the official MileBench LLaVA worker, checked against a rewrite in this file.

The data tree covers every kind of sample whose prompt the worker treats differently: multiple choice,
open-ended, CLEVR-Change's two adjacent images, three adjacent images, ALFRED-size image counts that
the budget truncates, GPR1200's unlettered options, the two needle tasks, and the combined-images mode.
The tokenizer adds BOS and keeps newlines as tokens, so the chunked ids and the newline rule show.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

from futuremask.cli import main
from futuremask.eval import milebench_style as mb
from futuremask.tiny import SPECIAL, tiny_llava

CONTEXT_LEN, PER_IMAGE = 200, 16  # the tiny tower: (32 / 8) ** 2 = 16 tokens per image
SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
          "the user provides, and assist the user with a variety of tasks using natural language.")
CHOICES = ["the red cube", "a blue ball", "two cats", "nothing"]
WORDS = ("step go to the kitchen take mug put it in cupboard turn left right walk window frame video scene "
         "what is in image happens next describe change between two images how many objects moved where ball "
         "read table answer question find needle secret word hidden text long story paragraph pick one query "
         "red cube blue ball cats nothing which similar choice list your Your answer is Choice Image INST SYS "
         "You are a helpful language and vision assistant able understand visual content that user provides "
         "assist with variety of tasks using natural A B C D ADVERSARIAL").split() + [f"g{k}" for k in range(30)] + \
    [str(k) for k in range(40)]


def _sample(sid, context, n_images, response, choices=None):
    inst = {"context": context, "images_path": [f"{sid}-{k}.png" for k in range(n_images)]}
    if choices:
        inst["choice_list"] = choices
    return {"sample_id": sid, "task_instruction_id": 0, "image_quantity_level": "Few", "response": response,
            "task_instance": inst}


def _alfred(sid, steps):
    text = " ".join(f"step {k} : {{image#{k}}} go to the kitchen take mug put it in cupboard turn left ."
                    for k in range(1, steps + 1))
    return _sample(sid, "Your goal : put the mug in the cupboard . " + text + " what happens next ?", steps,
                   "put mug")


TASKS = {
    "ActionLocalization": ("multi-choice", [
        _sample(1, "video frame {image#1} then {image#2} what happens ?", 2, CHOICES[1], CHOICES),
        _sample(2, "{image#1} scene {image#2} {image#3} which ?", 3, CHOICES[3], CHOICES)]),
    "WebQA": ("open-ended", [
        _sample(3, "{image#1} read the table {table#2} answer the question : what is in image 1 ?", 2, "red cube"),
        _sample(4, "describe {image#1}", 1, "two cats")]),
    "CLEVR-Change": ("open-ended", [
        _sample(5, "{image#1}{image#2} describe the change between two images .", 2, "the ball moved"),
        _sample(6, "what changed ? {image#1}{image#2}", 2, "nothing")]),
    "ObjectShuffle": ("multi-choice", [
        _sample(7, "{image#1}{image#2}{image#3} where is the ball ?", 3, CHOICES[0], CHOICES),
        _sample(8, "{image#1}{image#2}{image#3}{image#4}{image#5} how many objects moved ?", 5, CHOICES[2],
                CHOICES)]),
    "ALFRED": ("open-ended", [_alfred(9, 12), _alfred(10, 3)]),
    "GPR1200": ("multi-choice", [
        _sample(11, "query {image#1} which image is similar ? " + " ".join(f"{{image#{k}}}" for k in range(2, 6)),
                5, "g3", [f"g{k}" for k in range(30)])]),
    "TextNeedleInAHaystack": ("open-ended", [
        _sample(12, "long story paragraph " * 30 + "{image#1} the secret word is 7 . " + "hidden text " * 20
                + "{image#2} find the needle : what is the secret word ?", 2, "7"),
        _sample(13, "{image#1} " + "long story paragraph " * 90 + "what is the secret word ?", 1, "3")]),
    "ImageNeedleInAHaystack": ("open-ended", [
        _sample(14, " ".join(f"{{image#{k}}}" for k in range(1, 9)) + " find the needle : which image ?", 8, "4")]),
}
COMBINED = ("ALFRED", "CLEVR-Change")  # also written in combined_1 (in <Task>.json) and combined_2 files


def _image(path: Path, k: int) -> None:
    size = [(40, 24), (24, 40), (32, 32), (50, 30)][k % 4]  # non-square: the pad matters
    Image.new("RGB", size, (40 * k % 255, 90, 200 - 10 * k % 200)).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("milebench")
    for task, (qtype, samples) in TASKS.items():
        (root / task / "images").mkdir(parents=True)
        for s in samples:
            for k, name in enumerate(s["task_instance"]["images_path"]):
                _image(root / task / "images" / name, k + s["sample_id"])
        if task in COMBINED:
            for n in (1, 2):
                (root / task / f"combined_{n}_images").mkdir()
                for s in samples:
                    s["task_instance"][f"combined_{n}_images"] = [f"{s['sample_id']}-0.jpg"]
                    _image(root / task / f"combined_{n}_images" / f"{s['sample_id']}-0.jpg", n)
        meta = {"task_instruction": [f"answer the question about the {task} images ."], "question_type": qtype}
        payload = json.dumps({"meta_data": meta, "data": samples})
        (root / task / f"{task}.json").write_text(payload)
        if task in COMBINED:
            (root / task / f"{task}_combined_2.json").write_text(payload)
    return root


def _tokenizer() -> PreTrainedTokenizerFast:
    """Like Llama's: a word-start marker on the first word of every string tokenized and after spaces (so a
    chunk tokenized alone differs from the same text inside a longer string), BOS added, newlines and
    punctuation as tokens of their own."""
    pieces = ["▁"] + [p for w in WORDS for p in (w, "▁" + w)] + list("\n.,:?<>[]/{}#")
    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIAL + pieces))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Split(Regex(r"[^\w▁]"), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                 eos_token="</s>")
    hf.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return hf


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tokenizer = _tokenizer()
    words = list(tokenizer.get_vocab())
    model, _ = tiny_llava(words=[w for w in sorted(words, key=tokenizer.get_vocab().get) if w not in SPECIAL])
    assert model.config.text_config.vocab_size == len(tokenizer)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# --- the official rules, rewritten here ---------------------------------------------------------------


def official_question(ann: dict, instruction: str, task: str, root: Path, tok, combine: int | None):
    """MileBenchDataset.__getitem__: (question, image paths)."""
    inst = ann["task_instance"]
    context = inst["context"]
    if "choice_list" in inst:
        lines = [("" if task == "GPR1200" else chr(65 + k) + ". ") + c for k, c in enumerate(inst["choice_list"])]
        context += "\nChoice list: \n" + "\n".join(lines) + "\nYour answer is: "
    for k in range(1, len(inst["images_path"]) + 1):
        slot = f"<Image {k}> " if combine else "<ImageHere>"
        context = context.replace("{image#" + str(k) + "}", slot).replace("{table#" + str(k) + "}", slot)
    folder = f"combined_{combine}_images" if combine else "images"
    pending = [str(root / task / folder / p) for p in inst[f"combined_{combine}_images" if combine else "images_path"]]
    room = CONTEXT_LEN - len(tok(instruction, add_special_tokens=False).input_ids)
    chunks, kept, used, image_first = [], [], 0, False
    for piece in reversed(context.split("<ImageHere>")):
        ids = tok(piece, add_special_tokens=False).input_ids
        if used + len(ids) > room:
            if not chunks:
                chunks = [ids[-room:]]
            break
        image_first = False
        chunks = [ids] + chunks
        used += len(ids)
        if not combine:
            if used + PER_IMAGE > room:
                break
            if pending:
                image_first = True
                kept = [pending.pop()] + kept
                used += PER_IMAGE
    body = "<ImageHere>".join(tok.decode(c) for c in chunks)
    if combine:
        assert len(pending) == 1
        return "<ImageHere>\n" + instruction + "\n" + body, pending
    return instruction + "\n" + ("<ImageHere>" if image_first else "") + body, kept


def official_worker(question: str, tok, image_token_id: int) -> tuple[str, list[int]]:
    """The LLaVA worker: newline between adjacent image pairs, llava_llama_2, tokenizer_image_token."""
    out, i, pair = "", 0, "<ImageHere><ImageHere>"
    while i < len(question):
        if question.startswith(pair, i):
            out, i = out + "<ImageHere>\n<ImageHere>\n", i + len(pair)
        else:
            out, i = out + question[i], i + 1
    text = "[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n" + out.replace("<ImageHere>", "<image>") + " [/INST]"
    pieces = [tok(p).input_ids for p in text.split("<image>")]
    assert all(p[0] == tok.bos_token_id for p in pieces)
    ids = [tok.bos_token_id]
    for k, piece in enumerate(pieces):
        ids += ([image_token_id] * PER_IMAGE if k else []) + piece[1:]
    return text, ids


def _dry_run(tree: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--data-dir", str(tree), "--model", str(checkpoint), "--prompt-style", "milebench",
                 "--dry-run", "--max-context-len", str(CONTEXT_LEN), "--tokens-per-image", str(PER_IMAGE),
                 "--image-aspect", "pad", "--policy", "causal", "aki", "--output-dir", str(out), *extra])


def _expected(tree: Path, task: str, tok, image_token_id: int, combine: int | None = None):
    name = f"{task}_combined_{combine}.json" if combine and combine > 1 else f"{task}.json"
    payload = json.loads((tree / task / name).read_text())
    rows = []
    for ann in payload["data"]:
        question, images = official_question(ann, payload["meta_data"]["task_instruction"][0], task, tree, tok,
                                             combine)
        text, ids = official_worker(question, tok, image_token_id)
        rows.append({"sample_id": ann["sample_id"], "text": text,
                     "images": [os.path.relpath(p, tree) for p in images], "input_ids": ids})
    return rows


def _written(out: Path, run: str, task: str) -> list[dict]:
    return [json.loads(line) for line in (out / run / task / "prompts.jsonl").read_text().splitlines()]


def test_dry_run_writes_the_official_workers_texts_and_ids(tree, checkpoint, tmp_path):
    tok = _tokenizer()
    image_token_id = tok.convert_tokens_to_ids("<image>")
    assert _dry_run(tree, checkpoint, tmp_path) == 0
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert runs == ["tiny-llava__causal", "tiny-llava__future_v2t"]  # aki is future_v2t
    assert not list(tmp_path.rglob("pred.json")) and not list(tmp_path.rglob("*.tmp"))
    for task in TASKS:
        got = _written(tmp_path, "tiny-llava__causal", task)
        assert got == _expected(tree, task, tok, image_token_id), task
        assert _written(tmp_path, "tiny-llava__future_v2t", task) == got
    # the cases the tree is there for really occur
    clevr = _written(tmp_path, "tiny-llava__causal", "CLEVR-Change")[0]["text"]
    assert "<image>\n<image>\ndescribe" in clevr and "<image><image>" not in clevr
    shuffle = [r["text"] for r in _written(tmp_path, "tiny-llava__causal", "ObjectShuffle")]
    assert "<image>\n<image>\n<image>where" in shuffle[0]  # three: one pair, then a lone image
    assert "<image>\n<image>\n<image>\n<image>\n<image>how" in shuffle[1]
    alfred = _written(tmp_path, "tiny-llava__causal", "ALFRED")
    assert 0 < len(alfred[0]["images"]) < 12 and len(alfred[1]["images"]) == 3  # truncated / kept whole
    assert alfred[0]["images"][-1] == "ALFRED/images/9-11.png"  # the latest images are kept
    needle = _written(tmp_path, "tiny-llava__causal", "TextNeedleInAHaystack")
    assert needle[1]["images"] == [] and len(needle[1]["input_ids"]) < CONTEXT_LEN + 80
    gpr = _written(tmp_path, "tiny-llava__causal", "GPR1200")[0]["text"]
    assert "\ng0\ng1\n" in gpr and "A. g0" not in gpr
    for row in alfred + needle:
        assert row["input_ids"][0] == tok.bos_token_id and row["input_ids"].count(tok.bos_token_id) == 1
        assert row["input_ids"].count(image_token_id) == PER_IMAGE * len(row["images"])


@pytest.mark.parametrize("combine", [1, 2])
def test_dry_run_in_combined_mode(tree, checkpoint, tmp_path, combine):
    tok = _tokenizer()
    assert _dry_run(tree, checkpoint, tmp_path, "--tasks", *COMBINED, "--combine-images", str(combine)) == 0
    for task in COMBINED:
        got = _written(tmp_path, "tiny-llava__causal", task)
        assert got == _expected(tree, task, tok, tok.convert_tokens_to_ids("<image>"), combine)
        assert got[0]["images"] == [f"{task}/combined_{combine}_images/{got[0]['sample_id']}-0.jpg"]
        assert got[0]["text"].startswith("[INST] <<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n<image>\nanswer the")
        assert "<Image 2> " in got[-1]["text"] and got[-1]["text"].count("<image>") == 1


def test_milebench_style_refuses_what_the_official_code_leaves_open(tree, checkpoint, tmp_path, capsys):
    base = ["eval", "--data-dir", str(tree), "--model", str(checkpoint), "--prompt-style", "milebench",
            "--dry-run", "--output-dir", str(tmp_path)]
    assert main(base + ["--tokens-per-image", "576"]) == 2
    assert "needs --max-context-len" in capsys.readouterr().err
    assert main(base + ["--max-context-len", "4096", "--tokens-per-image", "576"]) == 2  # tiny config: no aspect
    assert "no image_aspect_ratio; pass --image-aspect pad" in capsys.readouterr().err
    assert main(base + ["--max-context-len", "4096", "--tokens-per-image", "576", "--batch-size", "2"]) == 2
    assert "one sample per call" in capsys.readouterr().err
    assert main(["eval", "--data-dir", str(tree), "--model", str(checkpoint), "--image-aspect", "pad",
                 "--dry-run", "--output-dir", str(tmp_path)]) == 2
    assert "add --prompt-style milebench" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written
    no_weights = tmp_path / "no-weights"  # a real run refuses before it loads the weights
    no_weights.mkdir()
    for f in checkpoint.iterdir():
        if not f.name.endswith(".safetensors"):
            (no_weights / f.name).write_bytes(f.read_bytes())
    assert main(["eval", "--data-dir", str(tree), "--model", str(no_weights), "--prompt-style", "milebench",
                 "--max-context-len", "4096", "--tokens-per-image", "576", "--output-dir", str(tmp_path)]) == 2
    assert "no image_aspect_ratio" in capsys.readouterr().err


def test_chat_style_dry_run_writes_the_processor_ids(tree, checkpoint, tmp_path):
    from futuremask.eval.data import load_task
    from futuremask.eval.prompt_styles import load_images
    from futuremask.eval.prompts import build_prompt

    assert main(["eval", "--data-dir", str(tree), "--model", str(checkpoint), "--dry-run", "--tasks", "WebQA",
                 "--policy", "causal", "--output-dir", str(tmp_path)]) == 0
    processor = LlavaProcessor.from_pretrained(checkpoint)
    rows = _written(tmp_path, "tiny-llava__causal", "WebQA")
    for row, sample in zip(rows, load_task(tree, "WebQA").samples, strict=True):
        prompt = build_prompt(sample, processor, 4096, PER_IMAGE)
        ids = processor(text=[prompt.text], images=load_images(sample.image_paths))["input_ids"][0]
        assert row["text"] == prompt.text and row["input_ids"] == list(ids)
        assert row["images"] == [f"WebQA/images/{p}" for p in sample.raw["task_instance"]["images_path"]]


# --- images, stopping, generation ----------------------------------------------------------------------


def test_pad_to_square_and_the_processors_pixels(checkpoint, tree):
    processor = LlavaProcessor.from_pretrained(checkpoint)
    mean = tuple(int(x * 255) for x in processor.image_processor.image_mean)
    for name in ("ActionLocalization/images/1-0.png", "WebQA/images/3-0.png"):  # 24 x 40 (tall), 50 x 30 (wide)
        image = Image.open(tree / name).convert("RGB")
        square = mb.expand_to_square(image, mean)
        w, h = image.size
        side = max(w, h)
        assert square.size == (side, side)
        pixels = torch.from_numpy(np.array(square))
        x, y = (side - w) // 2, (side - h) // 2
        inside = torch.zeros(side, side, dtype=torch.bool)
        inside[y:y + h, x:x + w] = True
        assert torch.equal(pixels[y:y + h, x:x + w], torch.from_numpy(np.array(image)))
        assert (pixels[~inside] == torch.tensor(mean)).all() and (~inside).any()
    ids, tensors = mb.image_inputs(processor, [image, square], "pad")
    assert ids == [[processor.tokenizer.convert_tokens_to_ids("<image>")] * PER_IMAGE] * 2
    want = processor.image_processor([square, square], return_tensors="pt")["pixel_values"]
    assert torch.equal(tensors["pixel_values"], want)
    _, plain = mb.image_inputs(processor, [image], "processor")
    assert not torch.equal(plain["pixel_values"][0], want[0])


def test_image_aspect_follows_the_checkpoint_config():
    class Config:
        image_aspect_ratio = "pad"

    assert mb.image_aspect(Config(), None) == "pad" and mb.image_aspect(Config(), "processor") == "processor"
    Config.image_aspect_ratio = "square"
    assert mb.image_aspect(Config(), None) == "processor"  # LLaVA's process_images: anything else -> processor
    Config.image_aspect_ratio = "anyres"
    with pytest.raises(ValueError, match="anyres"):
        mb.image_aspect(Config(), None)


def test_stop_at_separator_is_llavas_keyword_criterion():
    tok = _tokenizer()
    bos, word = tok.bos_token_id, tok.convert_tokens_to_ids("step")
    stop = mb.StopAtSeparator("<s>", tok, prompt_length=3)
    assert stop.ids.tolist() == [bos]  # "<s>" tokenizes to BOS BOS; the leading BOS is dropped
    prompt = [bos, word, word]
    for new, want in [([word], False), ([word, bos], True), ([bos], True), ([word, word, word, word], False)]:
        got = stop(torch.tensor([prompt + new]), None)
        assert got.tolist() == [want], new


def test_milebench_generate_end_to_end(tree, checkpoint, tmp_path):
    """A real run: pred.json holds what greedy decoding of the worker's exact inputs gives, cut after the first
    separator (BOS) the model emits, decoded without special tokens and stripped."""
    import futuremask as fm
    from futuremask.cli.eval import load_model

    tok = _tokenizer()
    assert main(["eval", "--data-dir", str(tree), "--model", str(checkpoint), "--prompt-style", "milebench",
                 "--max-context-len", str(CONTEXT_LEN), "--tokens-per-image", str(PER_IMAGE), "--image-aspect",
                 "pad", "--policy", "aki", "--tasks", "CLEVR-Change", "ActionLocalization", "--max-new-tokens", "6",
                 "--output-dir", str(tmp_path), "--no-progress"]) == 0
    model, processor = load_model(str(checkpoint), "float32", "cpu")
    run = tmp_path / "tiny-llava__future_v2t"
    assert json.loads((run / "run.json").read_text())["prompt_style"] == "milebench"
    for task in ("CLEVR-Change", "ActionLocalization"):
        preds = json.loads((run / task / "pred.json").read_text())
        for pred, row in zip(preds, _expected(tree, task, tok, tok.convert_tokens_to_ids("<image>")), strict=True):
            images = [mb.expand_to_square(Image.open(tree / p).convert("RGB"),
                                          tuple(int(x * 255) for x in processor.image_processor.image_mean))
                      for p in row["images"]]
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            ids = torch.tensor([row["input_ids"]])
            with fm.apply(model, "future_v2t"), torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                     max_new_tokens=6, min_new_tokens=1, do_sample=False)
            new = out[0, ids.shape[1]:].tolist()
            if tok.bos_token_id in new:
                new = new[:new.index(tok.bos_token_id) + 1]
            assert pred["pred_response"] == tok.decode(new, skip_special_tokens=True).strip()
            assert pred["question"].count("<ImageHere>") == len(pred["image"])
        assert (run / task / "eval.json").is_file()  # scored with the official rules


def test_adv_generates_from_the_task_file_and_scores_against_adv(tree, checkpoint, tmp_path):
    """--adv as the official code: prompts from <Task>.json, scoring against <Task>-adv.json."""
    import shutil

    task = "ActionLocalization"
    shutil.copytree(tree / task, tmp_path / "data" / task)
    adv = json.loads((tree / task / f"{task}.json").read_text())
    for s in adv["data"]:
        s["task_instance"]["context"] = "ADVERSARIAL " + s["task_instance"]["context"]
        s["task_instance"]["choice_list"] = s["task_instance"]["choice_list"][::-1]
    (tmp_path / "data" / task / f"{task}-adv.json").write_text(json.dumps(adv))
    assert main(["eval", "--data-dir", str(tmp_path / "data"), "--model", str(checkpoint), "--adv", "--policy",
                 "causal", "--max-new-tokens", "2", "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    run = tmp_path / "out" / "tiny-llava__causal" / task
    preds = json.loads((run / "pred.json").read_text())
    assert preds and all("ADVERSARIAL" not in p["question"] and "A. the red cube" in p["question"] for p in preds)
    scored = json.loads((run / "pred_with_extracted.json").read_text())
    assert [r["choice_list"] for r in scored] == [s["task_instance"]["choice_list"] for s in adv["data"]]
