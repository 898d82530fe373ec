"""Loading a user's checkpoint and building a sample prompt for it (used by ``verify`` and the pictures).

A checkpoint needs its multimodal processor (tokenizer + image processor). A checkpoint without a
chat template gets a plain prompt: the processor's image token followed by the question.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .names import DTYPES as DTYPE_NAMES

DEFAULT_PROMPT = "what color is the circle in the image ?"
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model_source(name: str, flag: str = "--model") -> None:
    """Fail early, before anything is loaded, when ``name`` is neither a checkpoint folder nor a hub id.

    Raises:
        ValueError: a path that does not exist, a file, or a folder without ``config.json``.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {name}: is a file; pass the checkpoint folder (saved with save_pretrained)")
        if not (path / "config.json").is_file():
            raise ValueError(f"{flag} {name}: the folder has no config.json; pass a checkpoint folder saved with "
                             "save_pretrained, or a hub id")
        return
    if _HUB_ID.fullmatch(name) and not name.startswith((".", "~")):
        return  # a hub id: its download (or the local cache) is checked when it loads
    raise ValueError(f"{flag} {name}: no such folder; pass a checkpoint folder or a Hugging Face hub id (org/name)")


def check_device(name: str | None, flag: str = "--device") -> None:
    """Fail early when the torch device ``name`` (``None``/``"auto"``: pick one) is not available here."""
    if name in (None, "auto"):
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{flag} {name}: not a torch device ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"{torch.cuda.device_count()} GPU(s) visible); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
                             f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name}: MPS is not available on this machine; use --device cpu")


def load_processor(path: str) -> Any:
    """The checkpoint's processor, or a ``ValueError`` that says what is missing and how to fix it."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... depending on what is missing
        raise ValueError(
            f"{path}: could not load a processor ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "futuremask needs the checkpoint's multimodal processor (tokenizer + image processor): "
            "save it next to the weights with processor.save_pretrained(PATH)"
        ) from err
    if getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"{path}: the processor found is a {type(processor).__name__} with no image processor, so no image "
            "can be fed. Save the model's full processor there with processor.save_pretrained(PATH)"
        )
    return processor


def resolve_device(device: str | None = None) -> str:
    """The device rule of every command: ``None``/``"auto"`` is ``cuda:<LOCAL_RANK>`` when CUDA is available
    (one GPU per launched process), else ``cpu``; any other name is kept."""
    if device not in (None, "auto"):
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype | str:
    """The dtype rule of every command: ``"auto"`` is the checkpoint's own dtype on CUDA and float32
    elsewhere (half precision on CPU is slow and inexact); a name of :data:`DTYPES` is that dtype."""
    if dtype == "auto":
        return "auto" if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {('auto', *DTYPES)}")
    return DTYPES[dtype]


def load_model(source: str, *, dtype: str = "auto", device: str | None = None, flag: str = "--model") -> Any:
    """A VLM (``AutoModelForImageTextToText``) in eval mode on ``device`` (:func:`resolve_device`) in ``dtype``
    (:func:`resolve_dtype`); a ``ValueError`` naming ``flag`` when ``source`` cannot be loaded."""
    from transformers import AutoModelForImageTextToText

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype)
    except Exception as err:  # OSError (no files, offline), ValueError/KeyError (not a VLM config), ...
        raise ValueError(
            f"{flag} {source}: could not load it as an image-text-to-text model ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). futuremask needs a decoder-only VLM checkpoint: a folder, or a hub id "
            "that is downloadable or cached"
        ) from err
    return model.to(device).eval()


def load_checkpoint(
    path: str, *, dtype: str = "float32", device: str | None = None, flag: str = "--model"
) -> tuple[Any, Any]:
    """``(model, processor)`` of a checkpoint directory or hub id, the model as :func:`load_model` gives it."""
    resolve_dtype(dtype, "cpu")  # an unknown dtype fails before anything is read
    check_model_source(path)
    check_device(device)
    processor = load_processor(path)
    return load_model(path, dtype=dtype, device=device, flag=flag), processor


def sample_image(size: int = 336) -> Any:
    """A drawn test picture: a red circle, a blue square and a green triangle on white (PIL RGB)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    s = size / 12
    draw.ellipse([1 * s, 1 * s, 5 * s, 5 * s], fill=(220, 30, 30))
    draw.rectangle([7 * s, 2 * s, 11 * s, 6 * s], fill=(30, 60, 210))
    draw.polygon([(2 * s, 11 * s), (6 * s, 7 * s), (10 * s, 11 * s)], fill=(30, 170, 60))
    return img


def open_image(path: str | os.PathLike) -> Any:
    """An RGB PIL image from a file, with a clear error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path).convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {os.fspath(path)!r}: {err}") from err


def has_chat_template(processor: Any) -> bool:
    tokenizer = getattr(processor, "tokenizer", None)
    return bool(getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None))


def prompt_text(processor: Any, prompt: str = DEFAULT_PROMPT, n_images: int = 1) -> str:
    """The text of a one-turn user prompt with ``n_images`` images, ready for generation.

    Uses the chat template when the processor has one, else ``"<image token> ... question"``.
    """
    if has_chat_template(processor):
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", None)
    if not image_token:
        raise ValueError(
            f"{type(processor).__name__} has neither a chat template nor an image_token, so futuremask cannot "
            "place the image in a prompt; give the processor a chat_template"
        )
    return " ".join([image_token] * n_images + [prompt])


@contextlib.contextmanager
def left_padding(processor: Any) -> Iterator[None]:
    """While active, ``processor``'s tokenizer (or ``processor`` itself, a tokenizer) pads on the left.

    Its own ``padding_side`` comes back on exit, so a caller that pads on the right (training) keeps doing so.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    side = getattr(tokenizer, "padding_side", None)
    if side is None:
        yield
        return
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def sample_inputs(
    processor: Any,
    image: Any = None,
    prompt: str | None = None,
    *,
    device: torch.device | str | None = None,
    extra_prompts: list[str] | None = None,
) -> Any:
    """Processor outputs for one prompt (or a left-padded batch: ``prompt`` then ``extra_prompts``).

    Args:
        image: a PIL image (default: :func:`sample_image`), used once per prompt.
        prompt: the question (default: :data:`DEFAULT_PROMPT`).

    Returns:
        The processor's ``BatchFeature`` (``input_ids [B, L]``, ``attention_mask``, pixels, ...) on ``device``.
    """
    image = sample_image() if image is None else image
    prompts = [prompt or DEFAULT_PROMPT] + list(extra_prompts or [])
    texts = [prompt_text(processor, p) for p in prompts]
    with left_padding(processor):
        batch = processor(images=[image] * len(texts), text=texts, padding=len(texts) > 1, return_tensors="pt")
    return batch.to(device) if device is not None else batch


__all__ = [
    "DEFAULT_PROMPT", "check_device", "check_model_source", "left_padding", "load_checkpoint", "load_model", "load_processor",
    "open_image", "prompt_text", "resolve_device", "resolve_dtype", "sample_image", "sample_inputs",
]
