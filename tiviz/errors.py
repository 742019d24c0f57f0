"""One place for tiviz's error wording: what went wrong, where (file, line, field) and the fix."""

from __future__ import annotations


class TivizError(Exception):
    """Base class of every error tiviz raises on purpose; the CLI prints it without a traceback."""


class DataError(TivizError, ValueError):
    """Bad input data: names the source file, the line or row, the field, and what to do."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        field: str | None = None,
        fix: str | None = None,
        unit: str = "line",
    ) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.fix = fix
        self.reason = message
        self.unit = unit
        super().__init__(format_location(message, source=source, line=line, field=field, fix=fix, unit=unit))


class ConfigError(TivizError, ValueError):
    """An invalid setting: names the field, the value given and the values allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid value for {field!r}: {value!r} (allowed: {allowed})")


class ModelError(TivizError):
    """A model or tokenizer that cannot be loaded or used as asked."""


class TableError(TivizError, ValueError):
    """A results table that is missing columns, has wrong types, or cannot be read."""


def format_location(
    message: str,
    *,
    source: str | None = None,
    line: int | None = None,
    field: str | None = None,
    fix: str | None = None,
    unit: str = "line",
) -> str:
    """Render 'FILE, line N, field F: message. Fix: ...' leaving out the parts that are unknown.

    `unit` names what `line` counts: "line" (1-based, text files) or "row" (0-based, in-memory lists, JSON
    arrays and Parquet tables, where a line number would point at the wrong place).
    """
    where = []
    if source is not None:
        where.append(str(source))
    if line is not None:
        where.append(f"{unit} {line}")
    if field is not None:
        where.append(f"field {field!r}")
    text = f"{', '.join(where)}: {message}" if where else message
    if fix:
        text += f". Fix: {fix}"
    return text
