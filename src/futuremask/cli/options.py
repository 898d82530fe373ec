"""The options several commands share, with one spelling and one default each.

Choices come from the registries (:func:`futuremask.policies.accepted_names`, :mod:`futuremask.names`),
never from a list written out per command; nothing here imports torch.

* ``--policy NAME [NAME ...]`` (:func:`add_policy_option`): registered names and their aliases.
* ``--merge KIND`` plus ``--kernel``, ``--pool``, ``--prefix`` (:func:`add_merge_options`): a whole
  :class:`~futuremask.merge.Merge` (:func:`merge_from_args`); commands that try several kinds take
  ``--merge none kernel ...`` (:func:`merges_from_args`: each kind with the same window).
* ``--model``, ``--dtype``, ``--device`` (:func:`add_model_options`): the default of both is ``auto``
  everywhere: the checkpoint's dtype on CUDA and float32 on CPU (:func:`futuremask.checkpoint.resolve_dtype`),
  ``cuda:LOCAL_RANK`` when CUDA is available, else cpu (:func:`futuremask.checkpoint.resolve_device`).
* ``--backend`` (:func:`add_backend_option`).
* Outputs: ``--output-dir`` names a folder, ``--output`` a file; counts of samples are ``--batch-size``.

An old spelling stays for one release as a hidden alias (:func:`add_option`): it works as before and
prints one line to stderr naming the new spelling.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..merge_spec import MERGE_DEFAULTS, MERGE_FIELDS
from ..names import BACKENDS, DTYPES, MERGE_KINDS, POOLS
from ..policies import accepted_names

if TYPE_CHECKING:
    from ..merge import Merge

DEFAULT_DTYPE = "auto"
DEFAULT_DEVICE = "auto"


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores what the new one would and says, once per use, what to type now."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, new: str, *old: str,
               aliases: Sequence[str] = (), **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(new, *aliases, **kwargs)`` plus hidden, deprecated spellings ``old``.

    ``aliases`` are documented second names (``--compress-future``, the paper's); ``old`` share the
    option's destination, ``nargs``, ``type``, ``choices`` and ``const`` (a store or store-true action), do
    not appear in ``--help`` and warn when used. New and old spellings exclude each other; ``required`` is met by either.
    """
    if not old:
        return parser.add_argument(new, *aliases, **kwargs)
    required = kwargs.pop("required", False)
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(new, *aliases, **kwargs)
    for name in old:
        group.add_argument(name, dest=action.dest, action=DeprecatedAlias, new=new, nargs=action.nargs,
                           const=action.const, type=action.type, choices=action.choices, metavar=action.metavar,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return action


def add_policy_option(parser, *, default: Sequence[str] | None, help: str, old: Sequence[str] = (),
                      extra: Sequence[str] = ()) -> argparse.Action:
    """``--policy NAME [NAME ...]``: registered policy names and aliases (plus ``extra`` choices)."""
    choices = [*accepted_names(), *extra]
    return add_option(parser, "--policy", *old, nargs="+", choices=choices, metavar="NAME",
                      default=list(default) if default is not None else None,
                      help=f"{help}; any of {', '.join(choices)}")


def add_merge_options(parser, *, several: bool = False, default: Sequence[str] | None = None,
                      aliases: Sequence[str] = (), help: str | None = None) -> None:
    """``--merge`` (one kind, or with ``several`` a list that may hold ``none``) and the window options.

    ``default`` (with ``several``) is the list of kinds tried when ``--merge`` is not given.
    """
    kinds = ("none", *MERGE_KINDS) if several else MERGE_KINDS
    what = help or ("kinds to try: none (the policy's mask itself), " + ", ".join(MERGE_KINDS) if several else
                    "light future-aware attention: fold the future into the sink (kernel = the paper's pooled "
                    "scores, lse = mass-preserving)")
    add_option(parser, "--merge", aliases=aliases, choices=kinds, nargs="+" if several else None, metavar="KIND",
               default=list(default) if default is not None else None, help=f"{what}; any of {', '.join(kinds)}")
    parser.add_argument("--kernel", type=int, default=MERGE_DEFAULTS["kernel"],
                        help=f"merge pooling window, read by --merge kernel (default {MERGE_DEFAULTS['kernel']})")
    parser.add_argument("--pool", choices=POOLS, default=MERGE_DEFAULTS["pool"],
                        help=f"merge pooling, read by --merge kernel (default {MERGE_DEFAULTS['pool']})")
    parser.add_argument("--prefix", type=int, default=MERGE_DEFAULTS["prefix"],
                        help=f"sink positions that receive the future (default {MERGE_DEFAULTS['prefix']})")


def merge_from_args(args: argparse.Namespace, kind: str | None = None) -> Merge | None:
    """The :class:`~futuremask.merge.Merge` of ``--merge`` (or of ``kind``) and the window options; None without one.

    Raises:
        ValueError: a window option the merge does not read, or given without a merge (it would change nothing).
    """
    kind = args.merge if kind is None else kind
    return merges_from_args(args, [kind])[0]


def merges_from_args(args: argparse.Namespace, kinds: Sequence[str | None] | None = None) -> list[Merge | None]:
    """One :class:`~futuremask.merge.Merge` per kind of ``--merge KIND ...`` (or ``kinds``), None for ``none``.

    Each merge takes the window options its kind reads (:data:`~futuremask.merge_spec.MERGE_FIELDS`).

    Raises:
        ValueError: a window option no asked-for kind reads (it would change nothing).
    """
    from ..merge import Merge

    kinds = [None if kind == "none" else kind for kind in (args.merge or [] if kinds is None else kinds)]
    asked = [kind for kind in kinds if kind is not None]
    for name, value in MERGE_DEFAULTS.items():
        flag = f"--{name} {getattr(args, name)}"
        if getattr(args, name) != value and not any(name in MERGE_FIELDS[kind] for kind in asked):
            readers = " or ".join(k for k in MERGE_KINDS if name in MERGE_FIELDS[k])
            why = f"--merge {' '.join(asked)} does not read it" if asked else "no merge is asked for"
            raise ValueError(f"{flag} shapes only --merge {readers}, and {why}; add --merge {readers}, or drop {flag}")
    return [None if kind is None else Merge(kind=kind, **{name: getattr(args, name) for name in MERGE_FIELDS[kind]})
            for kind in kinds]


def add_model_options(parser, *, help: str, default: str | None = None, required: bool = False) -> None:
    """``--model``, ``--dtype`` and ``--device``, each with the one default every command shares."""
    parser.add_argument("--model", default=default, required=required, help=help)
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default=DEFAULT_DTYPE,
                        help="weights dtype (default auto: the checkpoint's own on CUDA, float32 on CPU)")
    parser.add_argument("--device", default=DEFAULT_DEVICE,
                        help="torch device: auto (cuda:LOCAL_RANK when CUDA is available, else cpu; the default), "
                             "cpu, cuda, cuda:N")


def add_backend_option(parser, *, default: str = "auto") -> None:
    """``--backend``: the attention implementations of :data:`futuremask.names.BACKENDS`."""
    parser.add_argument("--backend", choices=BACKENDS, default=default,
                        help=f"attention backend (default {default}; auto: flex on CUDA, sdpa elsewhere)")


__all__ = ["DEFAULT_DEVICE", "DEFAULT_DTYPE", "MERGE_DEFAULTS", "DeprecatedAlias", "add_backend_option",
           "add_merge_options", "add_model_options", "add_option", "add_policy_option", "merge_from_args",
           "merges_from_args"]
