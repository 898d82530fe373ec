"""A local lmms-eval task folder written by the tests: JSONL + PNG images + YAML + utils.py (--include_path).

Two tasks over the same documents (1 or 2 drawn images each, questions in the demo model's words):
``fm_gen`` (generate_until; ``doc_to_messages`` interleaves labels and images, ``doc_to_visual`` +
``doc_to_text`` serve the simple model), ``fm_mc`` (multiple_choice over colour words) and ``fm_ll``
(``output_type: loglikelihood`` of the answer word). lmms-eval 0.7.3's own ``process_results`` cannot
score a loglikelihood task (it unpacks the list of one result as the pair: ``ll, is_greedy = results``),
so ``fm_ll`` brings its own, as such a task must.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 60, 220), "yellow": (235, 215, 20)}
SHAPES = ("circle", "square", "triangle")
GEN_KWARGS = {"max_new_tokens": 5, "until": ["yellow", "orange"], "do_sample": False, "temperature": 0}
CHOICES = ["red", "green", "blue", "yellow", "left", "right", "image"]  # the last: words the demo model often says first

UTILS = '''
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(p).convert("RGB") for p in doc["images"]]


def doc_to_text(doc):
    return doc["question"]


def doc_to_answer(doc):
    return " " + doc["answer"]


def loglikelihood_results(doc, results):
    loss, is_greedy = results[0]
    return {"nll": float(loss), "greedy": int(is_greedy)}


def doc_to_messages(doc):
    content = []
    for k, image in enumerate(doc_to_visual(doc)):
        content += [{"type": "text", "text": f"image {k + 1} :"}, {"type": "image", "url": image}]
    content.append({"type": "text", "text": doc["question"]})
    return [{"role": "user", "content": content}]
'''

TASK = '''task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
{extra}
metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
'''


LOGLIKELIHOOD = '''task: fm_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_answer
process_results: !function utils.loglikelihood_results
metric_list:
  - metric: nll
    aggregation: mean
    higher_is_better: false
  - metric: greedy
    aggregation: mean
    higher_is_better: true
'''


def _draw(color: str, shape: str, size: int = 32) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    box = [6, 6, size - 6, size - 6]
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(6, size - 6), (size // 2, 6), (size - 6, size - 6)], fill=COLORS[color])
    return img


def documents(folder: Path, n: int = 6) -> list[dict]:
    """``n`` documents with 1 or 2 images each (so batches mix prompt lengths and image counts)."""
    colors = list(COLORS)
    docs = []
    for i in range(n):
        paths = []
        for k in range(1 + i % 2):
            path = folder / f"img{i}_{k}.png"
            _draw(colors[(i + 2 * k) % 4], SHAPES[(i + k) % 3]).save(path)
            paths.append(str(path))
        target = i % len(paths)
        question = f"what color is the shape in image {target + 1} ?" if i % 3 else "what color is it ?"
        docs.append({"id": i, "images": paths, "question": question,
                     "answer": colors[(i + 2 * target) % 4], "label": (i + 2 * target) % 4})
    return docs


def write(folder: Path, n: int = 6) -> list[dict]:
    """Write both tasks into ``folder``; returns the documents."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = documents(folder, n)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "utils.py").write_text(UTILS)
    gen = ("doc_to_messages: !function utils.doc_to_messages\ndoc_to_target: answer\n"
           "generation_kwargs:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in GEN_KWARGS.items()))
    mc = f"doc_to_target: label\ndoc_to_choice: {json.dumps(CHOICES)}"
    (folder / "fm_gen.yaml").write_text(TASK.format(name="fm_gen", data=data, output_type="generate_until",
                                                    extra=gen, metric="exact_match"))
    (folder / "fm_mc.yaml").write_text(TASK.format(name="fm_mc", data=data, output_type="multiple_choice",
                                                   extra=mc, metric="acc"))
    (folder / "fm_ll.yaml").write_text(LOGLIKELIHOOD.format(data=data))
    (folder / "fm_ll.yaml").write_text(LOGLIKELIHOOD.format(data=data))
    return docs
