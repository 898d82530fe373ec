"""MileBench prompt construction: exact strings, left truncation, chat template, image token count."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from futuremask.eval.data import Sample, load_task
from futuremask.eval.demo import DEMO_WORDS, generate_demo_data
from futuremask.eval.prompts import (
    IMAGE_SLOT,
    build_prompt,
    chat_text,
    choice_suffix,
    count_image_tokens,
    raw_context,
    truncate,
)
from futuremask.tiny import tiny_llava

S = IMAGE_SLOT
MC = "look at the images and choose the right answer from the choice list ."  # 14 tokens


@pytest.fixture(scope="module")
def processor():
    return tiny_llava(words=list(DEMO_WORDS), num_layers=1, seed=0)[1]


@pytest.fixture(scope="module")
def color_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_demo_data(root, samples_per_task=2, seed=0, tasks=["DemoColor", "DemoChange"])
    return root


def test_choice_block_matches_the_official_format():
    assert choice_suffix(["red", "blue"], "TQA") == "\nChoice list: \nA. red\nB. blue\nYour answer is: "
    assert choice_suffix(["cat", "dog", "owl"], "GPR1200") == "\nChoice list: \ncat\ndog\nowl\nYour answer is: "


def test_fixture_prompt_strings(color_task: Path, processor):
    # DemoColor sample 0 (seed 0): 4 labelled images, the question names image 3.
    sample = load_task(color_task, "DemoColor").samples[0]
    assert raw_context(sample) == (
        f"image 1 : {S} image 2 : {S} image 3 : {S} image 4 : {S} what color is the shape in image 3 ?"
        "\nChoice list: \nA. green\nB. purple\nC. blue\nD. red\nYour answer is: "
    )
    prompt = build_prompt(sample, processor, max_context_len=4096, tokens_per_image=16)
    # Kept fragments are re-decoded by the tokenizer, as MileBench does: the word-level tokenizer joins
    # words with single spaces, so newlines and the spaces around slots disappear.
    assert prompt.question == (
        MC + f"\nimage 1 :{S}image 2 :{S}image 3 :{S}image 4 :{S}what color is the shape in image 3 ? "
        "Choice list: A. green B. purple C. blue "
        "D. red Your answer is:"
    )
    assert prompt.text == (
        "USER: " + MC + "\nimage 1 : <image> image 2 : <image> image 3 : <image> image 4 : <image> "
        "what color is the shape in image 3 ? Choice list: "
        "A. green B. purple C. blue D. red Your answer is: ASSISTANT:"
    )
    assert prompt.image_paths == sample.image_paths

    change = load_task(color_task, "DemoChange").samples[1]
    assert build_prompt(change, processor, 4096, 16).text == (
        "USER: look at the images and answer the question with a short answer .\nimage 1 : <image> "
        "image 2 : <image> which shape changed color and to what color ? ASSISTANT:"
    )


def test_truncation_drops_the_earliest_images_first(color_task: Path, processor):
    sample = load_task(color_task, "DemoColor").samples[0]
    tail = "what color is the shape in image 3 ? Choice list: A. green B. purple C. blue D. red Your answer is:"
    # budget = 14 (instruction) + 22 (question) + 2 * (3 + 16) (two images, each with its "image k :"
    # label) = 74; from 71 to 73 the second image fits but not its label, and below 71 only one image.
    prompt = build_prompt(sample, processor, max_context_len=74, tokens_per_image=16)
    assert prompt.image_paths == sample.image_paths[2:]
    assert prompt.question == MC + f"\nimage 3 :{S}image 4 :{S}" + tail
    prompt = build_prompt(sample, processor, max_context_len=71, tokens_per_image=16)
    assert prompt.image_paths == sample.image_paths[2:]
    assert prompt.question == MC + f"\n{S}image 4 :{S}" + tail
    prompt = build_prompt(sample, processor, max_context_len=70, tokens_per_image=16)
    assert prompt.image_paths == sample.image_paths[3:]
    assert prompt.question == MC + f"\nimage 4 :{S}" + tail
    # The question alone is over budget: its last 5 tokens are kept, no image.
    prompt = build_prompt(sample, processor, max_context_len=19, tokens_per_image=16)
    assert prompt.image_paths == []
    assert prompt.question == MC + "\nD. red Your answer is:"
    with pytest.raises(ValueError, match="no room after the task instruction"):
        build_prompt(sample, processor, max_context_len=14, tokens_per_image=16)


def test_truncation_drops_text_together_with_its_image(processor):
    tok = processor.tokenizer
    context = f"first {S} second {S} third ?"  # fragments: 1, 1, 2 tokens
    images = ["a.png", "b.png"]
    # 2 + 16 + 1 = 19 fit, the next image would make 35.
    assert truncate("what", context, images, tok, 1 + 19, 16) == (f"what\nsecond{S}third ?", ["b.png"])
    assert truncate("what", context, images, tok, 1 + 34, 16) == (f"what\nsecond{S}third ?", ["b.png"])
    # 35 fit: image a is kept but not the word before it, so the prompt starts with a slot.
    assert truncate("what", context, images, tok, 1 + 35, 16) == (f"what\n{S}second{S}third ?", images)
    assert truncate("what", context, images, tok, 1 + 36, 16) == (f"what\nfirst{S}second{S}third ?", images)


def test_gpr1200_and_table_placeholders(processor, tmp_path: Path):
    sample = Sample(task="GPR1200", index=0, sample_id=0, instruction="which", context="{table#1} {image#2} ?",
                    image_paths=["x.png", "y.png"], response="cat", choice_list=["cat", "dog"])
    assert raw_context(sample) == f"{S} {S} ?\nChoice list: \ncat\ndog\nYour answer is: "


def test_templates_that_hoist_images_get_inline_image_tokens(processor):
    hoisting = copy.deepcopy(processor)
    hoisting.chat_template = (  # renders every image part first, as llava-hf's template does
        "{% for m in messages %}USER: {% for c in m['content'] if c['type'] == 'image' %}<image>\n{% endfor %}"
        "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    question = f"look\n{S}what{S}is ?"
    assert chat_text(hoisting, question) == "USER: look\n<image>what<image>is ? ASSISTANT:"
    assert chat_text(processor, question) == "USER: look\n <image> what <image> is ? ASSISTANT:"


def test_count_image_tokens_is_the_processor_expansion(color_task: Path, processor):
    from PIL import Image

    with Image.open(load_task(color_task, "DemoColor").samples[0].image_paths[0]) as im:
        assert count_image_tokens(processor, im.convert("RGB")) == (32 // 8) ** 2
    big = Image.new("RGB", (300, 200), (1, 2, 3))  # resized by the processor to 32x32: still 16
    assert count_image_tokens(processor, big) == 16
