"""A small procedural benchmark in MileBench format, and the tiny model that the offline demo runs.

Every task is drawn with PIL on 32x32 images (16 visual tokens each for :func:`futuremask.tiny.tiny_llava`).
The question always comes *after* the images and says which image or which attribute matters, so a
visual token that may look at the question (a future-aware mask) has something to gain:

=================  ============  =====================================================================
task               type          question
=================  ============  =====================================================================
DemoColor          multi-choice  what color is the shape in image k ?
DemoFind           multi-choice  which image has the <color> <shape> ? (always 4 images)
DemoDirection      multi-choice  in which direction does the shape move ? (frames in temporal order)
DemoChange         open-ended    which shape changed color and to what color ? (answer: "<side> <color>")
DemoCount          open-ended    how many <shape> are there in all images ? (count across images)
=================  ============  =====================================================================

Each image is introduced by a text label, as in many MileBench contexts:
``image 1 : {image#1} image 2 : {image#2} ... <question>``. The label lets a model bind "image k" in
the question to an image by content (the label tokens) rather than by counting image blocks, and it is
what a visual token that may look ahead (``future``, ``mma``) can match against the question.

Answers are designed so that a model that ignores the images scores low: DemoFind's answer position is
uniform over the 4 images (chance 25 %), and DemoChange's answer is two informative words (side and new
color, no template words), so its ROUGE-L tracks what the model saw.

All words of the prompts and answers are in :data:`DEMO_WORDS`, the vocabulary of the demo model's
word-level tokenizer.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

from ..io import write_bytes_atomic, write_json_atomic
from ..tiny import BASE_WORDS

IMAGE_SIZE = 32
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 60, 220),
    "yellow": (235, 215, 20),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
DIRECTIONS = ("left", "right", "up", "down")

MC_INSTRUCTION = "look at the images and choose the right answer from the choice list ."
OPEN_INSTRUCTION = "look at the images and answer the question with a short answer ."

# Words of the official MileBench choice-list suffix, as a whitespace tokenizer splits it.
_CHOICE_WORDS = "Choice list: A. B. C. D. E. F. Your is:"
_EXTRA_WORDS = (
    "look at choose from with short direction does do has have move moves moving way changed change now became "
    "circles squares triangles all there two three four shape shapes "
    + _CHOICE_WORDS
)


def _unique(words) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for word in words:
        seen.setdefault(word, None)
    return tuple(seen)


DEMO_WORDS: tuple[str, ...] = _unique(list(BASE_WORDS) + _EXTRA_WORDS.split())
"""Every word that the demo prompts, chat template and answers use (base words keep their ids)."""

DEMO_TASKS = ("DemoColor", "DemoFind", "DemoDirection", "DemoChange", "DemoCount")
TRAINED_DEMO_TASKS = ("DemoWhich", "DemoPick")
"""The tasks of the trained-mask demo (:mod:`futuremask.eval.trained_demo`), generated only when named."""
ALL_DEMO_TASKS = DEMO_TASKS + TRAINED_DEMO_TASKS
DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "demo-vlm"


# --- drawing ---------------------------------------------------------------------------------------


def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    return image, ImageDraw.Draw(image)


def _draw(draw: ImageDraw.ImageDraw, shape: str, color: str, cx: float, cy: float, r: float) -> None:
    fill = COLORS[color]
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _single(shape: str, color: str, cx: float = 16, cy: float = 16, r: float = 9) -> Image.Image:
    image, draw = _canvas()
    _draw(draw, shape, color, cx, cy, r)
    return image


# --- tasks -----------------------------------------------------------------------------------------
# Each maker returns (images, context, response, choice_list or None).

Sample = tuple[list[Image.Image], str, str, "list[str] | None"]


def _placeholders(n: int) -> str:
    """``image 1 : {image#1} image 2 : {image#2} ...``: every image slot behind its text label."""
    return " ".join(f"image {k} : {{image#{k}}}" for k in range(1, n + 1))


def _choices(rng: random.Random, answer: str, pool: list[str], n: int = 4) -> list[str]:
    others = [x for x in pool if x != answer]
    options = [answer] + rng.sample(others, n - 1)
    rng.shuffle(options)
    return options


def _make_color(rng: random.Random) -> Sample:
    n = rng.randint(2, 4)
    colors = rng.sample(list(COLORS), n)
    images = [_single(rng.choice(SHAPES), c) for c in colors]
    k = rng.randint(1, n)
    context = f"{_placeholders(n)} what color is the shape in image {k} ?"
    return images, context, colors[k - 1], _choices(rng, colors[k - 1], list(COLORS))


def _make_find(rng: random.Random) -> Sample:
    # A fixed image count keeps the answer position uniform: with 2-4 images and k <= n, "image 1" and
    # "image 2" would be far more frequent than "image 4", and a constant answer would beat chance.
    n = 4
    pairs = rng.sample([(s, c) for s in SHAPES for c in COLORS], n)
    images = [_single(s, c) for s, c in pairs]
    k = rng.randint(1, n)
    shape, color = pairs[k - 1]
    context = f"{_placeholders(n)} which image has the {color} {shape} ?"
    choices = [f"image {i}" for i in range(1, n + 1)]
    return images, context, f"image {k}", choices


def _make_direction(rng: random.Random) -> Sample:
    n = 3
    direction = rng.choice(DIRECTIONS)
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    steps = {"left": (-7, 0), "right": (7, 0), "up": (0, -7), "down": (0, 7)}[direction]
    start = {"left": (23, 16), "right": (9, 16), "up": (16, 23), "down": (16, 9)}[direction]
    images = [_single(shape, color, start[0] + t * steps[0], start[1] + t * steps[1], r=5) for t in range(n)]
    context = f"{_placeholders(n)} in which direction does the shape move ?"
    return images, context, direction, _choices(rng, direction, list(DIRECTIONS))


def _make_change(rng: random.Random) -> Sample:
    shapes = [rng.choice(SHAPES), rng.choice(SHAPES)]
    colors = rng.sample(list(COLORS), 2)
    side = rng.randint(0, 1)
    new_color = rng.choice([c for c in COLORS if c not in colors])
    after = list(colors)
    after[side] = new_color
    images = []
    for palette in (colors, after):
        image, draw = _canvas()
        for i, (shape, color) in enumerate(zip(shapes, palette, strict=True)):
            _draw(draw, shape, color, 9 + 14 * i, 16, 6)
        images.append(image)
    position = ("left", "right")[side]
    context = f"{_placeholders(2)} which shape changed color and to what color ?"
    # Two informative words and no template: a constant answer gets both right only when the side and
    # the new color happen to agree (measured: the best training-set constant scores 35 ROUGE-L).
    return images, context, f"{position} {new_color}", None


def _make_count(rng: random.Random) -> Sample:
    n = rng.randint(2, 3)
    target = rng.choice(SHAPES)
    total = 0
    images = []
    slots = [(9, 9), (23, 9), (9, 23), (23, 23)]
    for _ in range(n):
        image, draw = _canvas()
        for x, y in rng.sample(slots, rng.randint(0, 3)):
            shape = rng.choice(SHAPES)
            total += shape == target
            _draw(draw, shape, rng.choice(list(COLORS)), x, y, 5)
        images.append(image)
    context = f"{_placeholders(n)} how many {PLURAL[target]} are there in all images ?"
    return images, context, str(total), None


def _make_which(rng: random.Random) -> Sample:
    # Four images of four different colors, and the choice list is exactly those four colors: an answer
    # read from any image but the named one is wrong, so locating image k is the whole task (chance 25 %).
    n = 4
    colors = rng.sample(list(COLORS), n)
    images = [_single(rng.choice(SHAPES), c) for c in colors]
    k = rng.randint(1, n)
    choices = list(colors)
    rng.shuffle(choices)
    context = f"{_placeholders(n)} what color is the shape in image {k} ?"
    return images, context, colors[k - 1], choices


def _two_shapes(left: tuple[str, str], right: tuple[str, str]) -> Image.Image:
    """Two ``(shape, color)`` objects side by side: one in each half of the image."""
    image, draw = _canvas()
    for x, (shape, color) in zip((8, 24), (left, right), strict=True):
        _draw(draw, shape, color, x, 16, 6)
    return image


def _make_pick(rng: random.Random) -> Sample:
    # Locating the answer needs both words of the question: which image (of 4, each holding two shapes) and
    # which shape in it. The other shape's color in the same image is always among the choices, so reading
    # the right image but the wrong half scores no better than chance.
    n = 4
    objects = []
    for _ in range(n):
        shapes, colors = rng.sample(SHAPES, 2), rng.sample(list(COLORS), 2)
        objects.append(list(zip(shapes, colors, strict=True)))
    images = [_two_shapes(*pair) for pair in objects]
    k, side = rng.randint(1, n), rng.randint(0, 1)
    shape, color = objects[k - 1][side]
    distractor = objects[k - 1][1 - side][1]
    pool = [c for c in COLORS if c not in (color, distractor)]
    choices = [color, distractor, *rng.sample(pool, 2)]
    rng.shuffle(choices)
    context = f"{_placeholders(n)} what color is the {shape} in image {k} ?"
    return images, context, color, choices


_MAKERS: dict[str, tuple[Callable[[random.Random], Sample], str]] = {
    "DemoColor": (_make_color, "multi-choice"),
    "DemoFind": (_make_find, "multi-choice"),
    "DemoDirection": (_make_direction, "multi-choice"),
    "DemoChange": (_make_change, "open-ended"),
    "DemoCount": (_make_count, "open-ended"),
    "DemoWhich": (_make_which, "multi-choice"),
    "DemoPick": (_make_pick, "multi-choice"),
}


def _check_words(text: str, where: str) -> None:
    unknown = [w for w in text.split() if w not in DEMO_WORDS and not w.startswith("{")]
    if unknown:
        raise AssertionError(f"demo words missing from DEMO_WORDS in {where}: {unknown}")


def _write_png(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def generate_demo_data(
    out_dir: str | os.PathLike, samples_per_task: int = 24, seed: int = 0, tasks: list[str] | None = None
) -> list[str]:
    """Write the demo benchmark in MileBench format and return the task names.

    Layout: ``<out_dir>/<Task>/<Task>.json`` and ``<out_dir>/<Task>/images/<sample_id>_<k>.png``
    (RGB, 32x32). The same ``seed`` always gives the same files, and sample ``i`` does not depend on
    ``samples_per_task``. Every file is written atomically (images first, then the task file).

    Args:
        out_dir: folder to write into (created if needed).
        samples_per_task: samples per task.
        seed: random seed; each task draws from its own generator seeded by ``seed`` and the task name.
        tasks: names from :data:`ALL_DEMO_TASKS` (default: :data:`DEMO_TASKS`).
    """
    out = Path(out_dir)
    names = list(DEMO_TASKS if tasks is None else tasks)
    for name in names:
        if name not in _MAKERS:
            raise ValueError(f"unknown demo task {name!r}; choose from {ALL_DEMO_TASKS}")
        maker, question_type = _MAKERS[name]
        rng = random.Random(f"{seed}:{name}")
        instruction = MC_INSTRUCTION if question_type == "multi-choice" else OPEN_INSTRUCTION
        image_dir = out / name / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        data = []
        for sample_id in range(samples_per_task):
            images, context, response, choices = maker(rng)
            paths = []
            for k, image in enumerate(images, start=1):
                filename = f"{sample_id}_{k}.png"
                _write_png(image_dir / filename, image)
                paths.append(filename)
            _check_words(context + " " + response + " " + " ".join(choices or []), f"{name} sample {sample_id}")
            instance = {"context": context, "images_path": paths}
            if choices is not None:
                instance["choice_list"] = choices
            data.append({
                "sample_id": sample_id,
                "task_instruction_id": 0,
                "image_quantity_level": "Few",
                "response": response,
                "task_instance": instance,
            })
        meta = {"task": name, "task_instruction": [instruction], "question_type": question_type}
        _check_words(instruction, f"{name} instruction")
        write_json_atomic(out / name / f"{name}.json", {"meta_data": meta, "data": data}, indent=2)
    return names


def load_demo_model(checkpoint: str | os.PathLike | None = None):
    """The demo VLM and its processor: ``(model, processor)``, in eval mode.

    Loads the committed checkpoint at ``src/futuremask/assets/demo-vlm/`` (``from_pretrained``) when it
    exists, else builds the random-weight ``tiny_llava(words=DEMO_WORDS, seed=0)``.
    """
    path = Path(checkpoint) if checkpoint is not None else DEMO_CHECKPOINT
    if path.is_dir() and (path / "config.json").exists():
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(path).eval()
        processor = AutoProcessor.from_pretrained(path)
        return model, processor
    from ..tiny import tiny_llava

    return tiny_llava(words=list(DEMO_WORDS), seed=0)


__all__ = ["ALL_DEMO_TASKS", "DEMO_TASKS", "DEMO_WORDS", "TRAINED_DEMO_TASKS", "generate_demo_data", "load_demo_model"]
