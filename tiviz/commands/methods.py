"""`tiviz methods`: list the attribution methods."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the attribution methods")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tiviz.attribution.methods import DEFAULT_METHODS, METHODS

    width = max(map(len, METHODS))
    for m in METHODS.values():
        tags = [t for t, on in (("default", m.name in DEFAULT_METHODS), ("signed", m.signed),
                                ("needs --ref-model", m.needs_reference)) if on]
        print(f"{m.name:<{width}}  {m.description}" + (f"  [{', '.join(tags)}]" if tags else ""))
    return 0
