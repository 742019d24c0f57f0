"""Preference pairs in TRL's schema (standard text or conversational messages) from JSONL, JSON, CSV, Parquet,
a DataFrame or a list of dicts, validated row by row with errors that name the file, the line and the field."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tiviz.errors import DataError

log = logging.getLogger(__name__)

Message = dict[str, str]
Text = str | list[Message]
OnError = Literal["raise", "skip"]
REQUIRED = ("prompt", "chosen", "rejected")
OPTIONAL = ("id", "rationale_chosen", "rationale_rejected")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# JSON strings may hold U+2028, U+2029, U+0085, \v, \f raw, so JSONL lines end at \n, \r\n or \r only
# (str.splitlines would also split at those and break valid records apart).
_NEWLINE = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# The csv module refuses fields over 128 KiB by default; long responses are legitimate.
_CSV_FIELD_LIMIT = 1 << 30


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair. `prompt`, `chosen`, `rejected` are text or lists of chat messages (TRL's schema)."""

    id: str
    prompt: Text
    chosen: Text
    rejected: Text
    rationale_chosen: tuple[str, ...] = ()
    rationale_rejected: tuple[str, ...] = ()
    source: str = "<memory>"
    line: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)

    def response(self, side: Literal["chosen", "rejected"]) -> Text:
        return self.chosen if side == "chosen" else self.rejected

    def response_text(self, side: Literal["chosen", "rejected"]) -> str:
        """The response as plain text: for messages, the assistant contents joined by newlines."""
        return message_text(self.response(side))

    def prompt_text(self) -> str:
        """The prompt as plain text for display: for messages, 'role: content' lines."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict in TRL's schema (the inverse of loading)."""
        rec: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        if self.rationale_chosen:
            rec["rationale_chosen"] = list(self.rationale_chosen)
        if self.rationale_rejected:
            rec["rationale_rejected"] = list(self.rationale_rejected)
        rec.update(self.extra)
        return rec


def message_text(value: Text) -> str:
    """Plain text of a response: itself if a string, else its assistant messages' contents joined by newlines."""
    if isinstance(value, str):
        return value
    return "\n".join(m["content"] for m in value if m.get("role") == "assistant") or "\n".join(
        m["content"] for m in value
    )


def load_pairs(
    source: str | Path | Iterable[Mapping[str, Any]] | Any,
    *,
    on_error: OnError = "raise",
    name: str | None = None,
) -> list[PreferencePair]:
    """Load and validate preference pairs.

    Args:
        source: a path (.jsonl, .json, .csv, .parquet), a pandas DataFrame, or an iterable of dicts.
        on_error: "raise" (default) stops at the first bad row with a `DataError`; "skip" drops bad rows, logging
            a warning for each, and raises only when no valid row is left.
        name: what to call an in-memory source in error messages.
    Returns:
        the pairs, in file order.
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}", field="on_error")
    if isinstance(source, str | Path):
        path = Path(source)
        label = str(path)
        rows: Iterator[tuple[int | None, Any]] = _read_file(path)
        where = "row" if path.suffix.lower() in (".json", ".parquet") else "line"
    else:
        label = name or "<memory>"
        rows = _read_memory(source)
        where = "row"
    pairs: list[PreferencePair] = []
    seen: dict[str, int | None] = {}
    skipped = 0
    for lineno, raw in rows:
        try:
            if isinstance(raw, DataError):
                raise raw
            pair = parse_record(raw, source=label, line=lineno, where=where)
            if pair.id in seen:
                raise DataError(
                    f"duplicate id {pair.id!r} (first seen at {where} {seen[pair.id]})",
                    source=label, line=lineno, field="id", fix="give every pair a unique id", unit=where,
                )
            seen[pair.id] = lineno
            pairs.append(pair)
        except DataError as err:
            if on_error == "raise":
                raise
            skipped += 1
            log.warning("skipping bad pair: %s", err)
    if skipped:
        log.warning("%s: skipped %d bad pair(s), kept %d", label, skipped, len(pairs))
    if not pairs:
        raise DataError(
            "no valid preference pairs" + (f" ({skipped} bad rows skipped)" if skipped else " (empty input)"),
            source=label, fix="provide at least one row with prompt, chosen and rejected",
        )
    return pairs


def save_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    """Write pairs as JSONL in TRL's schema."""
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------- readers


def _read_file(path: Path) -> Iterator[tuple[int | None, Any]]:
    if not path.exists():
        raise DataError("file not found", source=str(path), fix="check the path")
    if path.is_dir():
        raise DataError("is a folder, not a file", source=str(path), fix="pass a .jsonl, .json, .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            f"unknown file type {suffix or '(none)'!r}", source=str(path),
            fix=f"use one of {', '.join(SUFFIXES)}",
        )
    if suffix == ".parquet":
        yield from _read_parquet(path)
        return
    data = path.read_bytes()
    if not data.strip():
        raise DataError("file is empty", source=str(path), fix="add preference pairs, one per line")
    text = _decode(data, str(path))
    if suffix == ".jsonl":
        yield from _read_jsonl(text, str(path))
    elif suffix == ".json":
        yield from _read_json(text, str(path))
    else:
        yield from _read_csv(text, str(path))


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start})",
            source=label, line=line, fix="re-save the file as UTF-8",
        ) from None


def _read_jsonl(text: str, label: str) -> Iterator[tuple[int | None, Any]]:
    for lineno, line in enumerate(_NEWLINE.split(text), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            yield lineno, DataError(
                f"invalid JSON ({err.msg} at column {err.colno})", source=label, line=lineno,
                fix="each line must be one JSON object",
            )
        except (ValueError, RecursionError) as err:  # a 5000-digit number, [[[[...]]]] nested too deep
            yield lineno, DataError(f"invalid JSON ({type(err).__name__}: {err})", source=label, line=lineno,
                                    fix="each line must be one JSON object of text fields")


def _read_json(text: str, label: str) -> Iterator[tuple[int | None, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg})", source=label, line=err.lineno) from None
    except (ValueError, RecursionError) as err:
        raise DataError(f"invalid JSON ({type(err).__name__}: {err})", source=label,
                        fix="use a JSON list of objects with text fields") from None
    if isinstance(data, dict) and "pairs" in data:
        data = data["pairs"]
    if not isinstance(data, list):
        raise DataError("expected a JSON list of objects", source=label, fix="use [{...}, {...}] or JSONL")
    yield from enumerate(data)


def _read_csv(text: str, label: str) -> Iterator[tuple[int | None, Any]]:
    previous_limit = csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    try:
        yield from _read_csv_rows(text, label)
    finally:
        csv.field_size_limit(previous_limit)


def _read_csv_rows(text: str, label: str) -> Iterator[tuple[int | None, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as err:
        raise DataError(f"cannot read the CSV header ({err})", source=label, line=1) from None
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(f"column {repeated[0]!r} appears {header.count(repeated[0])} times in the header",
                        source=label, line=1, field=repeated[0], fix="give every column a distinct name")
    start = 2
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield start, DataError(f"malformed CSV ({err})", source=label, line=start)
            return
        if row and any(cell.strip() for cell in row):
            if len(row) != len(header):
                yield start, DataError(
                    f"expected {len(header)} columns, found {len(row)}", source=label, line=start,
                    fix="quote fields that contain commas or newlines",
                )
            else:
                yield start, {h: _csv_cell(v) for h, v in zip(header, row, strict=True)}
        start = reader.line_num + 1


def _csv_cell(value: str) -> Any:
    """CSV cells holding JSON lists (rationales, messages) are decoded; everything else stays text."""
    s = value.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> Iterator[tuple[int | None, Any]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises many types for a damaged file
        raise DataError(f"cannot read Parquet ({type(err).__name__}: {err})", source=str(path),
                        fix="check that the file is a complete Parquet file") from None
    yield from enumerate(table.to_pylist())


def _read_memory(source: Any) -> Iterator[tuple[int | None, Any]]:
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a DataFrame
        source = source.to_dict(orient="records")
    if isinstance(source, Mapping):
        raise DataError("expected a list of dicts, got one dict", fix="wrap it in a list")
    if isinstance(source, bytes | bytearray) or not isinstance(source, Iterable):
        raise DataError(f"expected a file path, a DataFrame or a list of dicts, got {type(source).__name__}",
                        fix="pass a path to a .jsonl, .json, .csv or .parquet file, or a list of dicts")
    yield from enumerate(source)


# ---------------------------------------------------------------------------------------------- validation


def parse_record(raw: Any, *, source: str = "<memory>", line: int | None = None, where: str = "row") -> PreferencePair:
    """Validate one raw record and build a `PreferencePair`; raises `DataError` naming the field."""

    def fail(msg: str, fld: str | None = None, fix: str | None = None) -> DataError:
        return DataError(msg, source=source, line=line, field=fld, fix=fix, unit=where)

    if not isinstance(raw, Mapping):
        raise fail(f"expected an object with prompt/chosen/rejected, got {type(raw).__name__}")
    for key, value in raw.items():
        bad = _find_surrogate(value)
        if bad is not None:
            raise fail(f"contains a lone surrogate U+{ord(bad):04X} (half of a UTF-16 pair, not a character)",
                       str(key), "repair the text's encoding (a JSON '\\ud83d' escape needs its low half too)")
    values: dict[str, Text] = {}
    for key in REQUIRED:
        if key not in raw or raw[key] is None:
            raise fail("missing field", key, f"every pair needs {', '.join(REQUIRED)}")
        values[key] = _check_text(raw[key], key, fail)
    kinds = {k: isinstance(v, list) for k, v in values.items()}
    if len(set(kinds.values())) > 1:
        raise fail("mixes plain text and chat messages", "prompt",
                   "use text for all three fields, or message lists for all three")
    raw_id = raw.get("id")
    if raw_id is None or (isinstance(raw_id, float) and raw_id != raw_id):
        pair_id = f"{Path(source).stem}-{line}" if line is not None else f"pair-{line}"
    elif isinstance(raw_id, str | int) and not isinstance(raw_id, bool) and str(raw_id).strip():
        pair_id = str(raw_id)
    else:
        raise fail(f"id must be a non-empty string or integer, got {raw_id!r}", "id")
    rationales = {}
    for side in ("chosen", "rejected"):
        key = f"rationale_{side}"
        rationales[side] = _check_rationale(raw.get(key), message_text(values[side]), key, fail)
    extra = {k: v for k, v in raw.items() if k not in REQUIRED + OPTIONAL}
    return PreferencePair(
        id=pair_id, prompt=values["prompt"], chosen=values["chosen"], rejected=values["rejected"],
        rationale_chosen=rationales["chosen"], rationale_rejected=rationales["rejected"],
        source=source, line=line, extra=extra,
    )


def _find_surrogate(value: Any, depth: int = 0) -> str | None:
    """The first lone surrogate in a string or a nested list/dict of strings, else None. Such text cannot be
    encoded as UTF-8, so the tokenizer, Arrow and every writer would fail on it later with a library error."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return found.group() if found else None
    if depth < 8 and isinstance(value, list | tuple | Mapping):
        items = list(value.keys()) + list(value.values()) if isinstance(value, Mapping) else value
        for item in items:
            bad = _find_surrogate(item, depth + 1)
            if bad is not None:
                return bad
    return None


def _check_text(value: Any, key: str, fail: Any) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise fail("is empty", key, "give a non-empty text")
        if "\x00" in value:
            raise fail("contains a NUL byte", key, "remove the \\x00 characters")
        return value
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if isinstance(value, list):
        if not value:
            raise fail("is an empty message list", key)
        msgs: list[Message] = []
        for i, m in enumerate(value):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise fail(f"message {i} must be an object with string 'role' and 'content'", key)
            if "\x00" in m["content"]:
                raise fail(f"message {i} contains a NUL byte", key)
            msgs.append({"role": m["role"], "content": m["content"]})
        if key != "prompt" and not message_text(msgs).strip():
            raise fail("has no non-empty content", key)
        return msgs
    raise fail(f"must be text or a list of messages, got {type(value).__name__}", key)


def _check_rationale(value: Any, text: str, key: str, fail: Any) -> tuple[str, ...]:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return ()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail("must be a list of strings", key)
    for v in value:
        if not v:
            raise fail("contains an empty string", key)
        if v not in text:
            raise fail(f"{v!r} is not a substring of the response", key,
                       "rationales must be copied exactly from the response text")
    return tuple(value)
