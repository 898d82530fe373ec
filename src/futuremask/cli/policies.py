"""``futuremask policies``: list the mask policies and their rules."""

from __future__ import annotations

import argparse

from ..policies import get_policy, policy_aliases, policy_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policies", help="list the mask policies")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    aliases = {target: alias for alias, target in policy_aliases().items()}
    for name in policy_names():
        policy = get_policy(name)
        alias = f" (alias: {aliases[name]})" if name in aliases else ""
        rule = "j <= i" if policy.is_causal else f"j <= i, or {policy.description}"
        print(f"{name:<20} {rule}{alias}")
    return 0
