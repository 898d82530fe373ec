"""The ``futuremask`` command: a registry of sub-command modules (``python -m futuremask.cli`` runs it too).

Each module listed in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
sub-command(s) with ``parser.set_defaults(func=run)``; ``run(args)`` returns the exit code. The options
several commands share (policy, merge, model, backend, outputs) come from :mod:`futuremask.cli.options`.
Registration imports no torch: ``futuremask --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "futuremask.cli.policies",
    "futuremask.cli.eval",
    "futuremask.cli.score",
    "futuremask.cli.tune",
    "futuremask.cli.viz",
    "futuremask.cli.verify",
    "futuremask.cli.bench",
    "futuremask.cli.train",
]


RESUME_HINTS = {
    "eval": "finished batches are saved: run the same command again to resume",
}
"""What an interrupted sub-command tells the user (others: its files are written atomically or not at all)."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="futuremask",
        description="Future-aware and modality-mutual attention masks for Hugging Face VLMs.",
    )
    parser.add_argument("--version", action="version", version=f"futuremask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: FileNotFoundError, PermissionError, ...
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"futuremask {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command, "nothing was left half-written")
        print(f"futuremask {args.command}: interrupted (exit 130); {hint}", file=sys.stderr)
        return 130
