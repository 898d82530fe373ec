"""The prompt-style options of ``futuremask eval`` and their checks, made before any model is loaded.

Registration reads the style names from :mod:`futuremask.names`, so ``futuremask --help`` loads no torch.
"""

from __future__ import annotations

import argparse

from ..names import IMAGE_ASPECTS, PROMPT_STYLES


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--prompt-style``, ``--image-aspect``, ``--combine-images``, ``--dry-run``."""
    p.add_argument("--prompt-style", choices=PROMPT_STYLES, default="chat",
                   help="chat: the processor's chat template (default); milebench: MileBench's official LLaVA "
                        "worker (llava_llama_2 template, chunked ids, padded images, one sample per call), "
                        "which needs --max-context-len and --tokens-per-image")
    p.add_argument("--image-aspect", choices=IMAGE_ASPECTS, default=None,
                   help="milebench style: pad images to a square with the processor's mean colour, or give them to "
                        "the processor as they are (default: the checkpoint config's image_aspect_ratio)")
    p.add_argument("--combine-images", type=int, default=None, metavar="N",
                   help="milebench style: MileBench's combined mode (<Task>_combined_N.json, combined_N_images/)")
    p.add_argument("--dry-run", action="store_true",
                   help="load the processor and config only and write <run>/<Task>/prompts.jsonl (text, images, "
                        "input_ids of every sample) instead of generating")


def check(args: argparse.Namespace) -> None:
    """Refuse option combinations the chosen style cannot honour (ValueError, one line naming the fix)."""
    from ..eval.prompt_styles import get_style

    if args.prompt_style == "milebench":
        missing = [flag for flag, value in (("--max-context-len", args.max_context_len),
                                            ("--tokens-per-image", args.tokens_per_image)) if value is None]
        if missing:
            raise ValueError(f"--prompt-style milebench needs {' and '.join(missing)}: the official code ships no "
                             "default (the paper's LLaVA-1.5 runs: --max-context-len 4096 --tokens-per-image 576)")
    else:
        for flag, value in (("--image-aspect", args.image_aspect), ("--combine-images", args.combine_images)):
            if value is not None:
                raise ValueError(f"{flag} belongs to the official protocol; add --prompt-style milebench")
    if get_style(args.prompt_style).one_sample_per_call and (args.batch_size or 1) != 1:
        raise ValueError(f"--prompt-style {args.prompt_style} generates one sample per call, as the official "
                         "worker; drop --batch-size")
    if args.combine_images is not None and args.combine_images < 1:
        raise ValueError(f"--combine-images must be at least 1, got {args.combine_images}")
    if args.combine_images and args.adv:
        raise ValueError("--adv and --combine-images cannot be combined (no combined adversarial files)")


def run_options(args: argparse.Namespace, model_config) -> dict:
    """The :class:`~futuremask.eval.runner.RunConfig` fields of the style options (aspect resolved)."""
    from ..eval.milebench_style import image_aspect

    aspect = image_aspect(model_config, args.image_aspect) if args.prompt_style == "milebench" else None
    return {"prompt_style": args.prompt_style, "image_aspect": aspect, "combine_images": args.combine_images}


__all__ = ["add_arguments", "check", "run_options"]
