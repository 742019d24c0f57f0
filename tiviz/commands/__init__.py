"""One module per CLI subcommand: `add_parser(subparsers)` registers it, `run(args)` does the work."""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from tiviz.errors import ConfigError


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


def check_limit(value: int | None, flag: str = "limit") -> None:
    """Refuse a `--limit` that is not a positive count before any work starts (a negative slice would silently
    drop pairs from the end, and 0 would mean "all")."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(flag, value, "an integer >= 1 (leave the flag out for every pair)")


def check_table_out(path: str | Path, flag: str = "out") -> None:
    """Refuse an output table whose suffix names no table format, before hours of attribution are spent."""
    from tiviz.table import FORMATS

    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ConfigError(flag, str(path), f"a file ending in {', '.join('.' + f for f in FORMATS)}")


def add_cache_flags(parser: argparse.ArgumentParser) -> None:
    """`--cache-dir` and `--no-cache`: the on-disk attribution cache (`tiviz.attribution.cache`), on by default."""
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="reuse and store attributions here (default: $TIVIZ_CACHE_DIR/attributions, else "
                        "~/.cache/tiviz/attributions); keyed by the weights, the texts and the settings")
    parser.add_argument("--no-cache", action="store_true", help="compute everything; neither read nor write the cache")
    parser.add_argument("--cache-max-mb", type=float, default=None, metavar="MB",
                        help="size limit of the cache; past it the least recently used entries are deleted "
                        "(default: $TIVIZ_CACHE_MAX_MB, else 2048)")


def cache_arg(args: argparse.Namespace) -> bool | Path:
    """What `attribute(cache=...)` gets from the flags of `add_cache_flags`."""
    if args.no_cache:
        return False
    if args.cache_max_mb is not None:
        from tiviz.attribution.cache import LIMIT_ENV

        if not args.cache_max_mb >= 0:
            raise ConfigError("cache_max_mb", args.cache_max_mb, "a size in megabytes >= 0")
        os.environ[LIMIT_ENV] = str(args.cache_max_mb)  # read by the cache this process opens
    return Path(args.cache_dir) if args.cache_dir else True
