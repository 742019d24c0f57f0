"""The `tiviz` command line: a thin face over the library. Each subcommand lives in `tiviz/commands/NAME.py`
with `add_parser(subparsers)` and `run(args) -> int`; torch and transformers load only inside `run`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from tiviz import __version__

COMMANDS = ("attribute", "methods", "train", "evaluate", "report", "compare", "app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiviz", description="Which tokens drive a language model's preference, and TI-DPO alignment.")
    parser.add_argument("--version", action="version", version=f"tiviz {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tiviz.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"tiviz.commands.{name}":
                continue  # that subcommand is not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from tiviz.errors import TivizError

    try:
        return int(args.func(args) or 0)
    except TivizError as err:
        print(f"tiviz {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tiviz {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
