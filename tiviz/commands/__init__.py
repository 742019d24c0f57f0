"""One module per CLI subcommand: `add_parser(subparsers)` registers it, `run(args)` does the work."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: Any, *, skip: tuple[str, ...] = ()) -> None:
    """Add one `--field-name` flag per dataclass field, with the field's help text; defaults stay None so that
    only the flags a user gives override the dataclass (or a preset)."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default is not None else "")
        kind = type(default) if default is not None else str
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def dataclass_overrides(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    """The dataclass fields the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
