"""Preference pairs in TRL's schema (standard text or conversational messages) from JSONL, JSON, CSV, Parquet,
a DataFrame or a list of dicts, validated row by row with errors that name the file, the line and the field."""

from __future__ import annotations

import csv
import hashlib
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
# CSV cells that may hold JSON, and what their text must start like to be decoded (else it stays text).
_MESSAGE_LIST = re.compile(r"\[\s*\{")
_STRING_LIST = re.compile(r'\[\s*["\]]')
_CSV_JSON_CELLS = {"prompt": _MESSAGE_LIST, "chosen": _MESSAGE_LIST, "rejected": _MESSAGE_LIST,
                   "rationale_chosen": _STRING_LIST, "rationale_rejected": _STRING_LIST}


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


@dataclass(frozen=True)
class ReadBudget:
    """Most a load may decode: pairs (rows) and characters of text. A small file can decode to far more text
    than its size (a Parquet column of one 100 KB string repeated 2,000 times compresses to a few KB), so a
    server reading untrusted uploads sets one (the app does); `load_pairs` refuses past it, before decoding more.

    Args:
        max_rows: most rows, None for no limit.
        max_chars: most characters over every text field of every row, None for no limit.
        fix: what the refusal tells the user to do (e.g. which setting raises the limit).
    """

    max_rows: int | None = None
    max_chars: int | None = None
    fix: str = "split the file into smaller ones"


class _Meter:
    """Counts rows and characters against a `ReadBudget`, raising the `DataError` that names where it ran out."""

    def __init__(self, budget: ReadBudget | None, label: str, where: str) -> None:
        self.budget, self.label, self.where = budget or ReadBudget(), label, where
        self.rows = 0
        self.chars = 0

    def add(self, rows: int, chars: int, line: int | None) -> None:
        self.rows += rows
        self.chars += chars
        b = self.budget
        if b.max_rows is not None and self.rows > b.max_rows:
            raise DataError(f"holds more than {b.max_rows:,} pairs", source=self.label, line=line, fix=b.fix,
                            unit=self.where)
        if b.max_chars is not None and self.chars > b.max_chars:
            raise DataError(f"decodes to more than {b.max_chars:,} characters of text (by {self.where} {line})",
                            source=self.label, fix=b.fix)


def text_chars(value: Any, depth: int = 0) -> int:
    """Characters of text in a raw record value: a string, or the strings nested in lists and dicts."""
    if isinstance(value, str):
        return len(value)
    if depth < 8 and isinstance(value, Mapping):
        return sum(text_chars(k, depth + 1) + text_chars(v, depth + 1) for k, v in value.items())
    if depth < 8 and isinstance(value, list | tuple):
        return sum(text_chars(v, depth + 1) for v in value)
    return 0


def load_pairs(
    source: str | Path | Iterable[Mapping[str, Any]] | Any,
    *,
    on_error: OnError = "raise",
    name: str | None = None,
    budget: ReadBudget | None = None,
) -> list[PreferencePair]:
    """Load and validate preference pairs.

    Args:
        source: a path (.jsonl, .json, .csv, .parquet), a pandas DataFrame, or an iterable of dicts.
        on_error: "raise" (default) stops at the first bad row with a `DataError`; "skip" drops bad rows, logging
            a warning for each, and raises only when no valid row is left.
        name: what to call an in-memory source in error messages.
        budget: most rows and characters to decode (default: no limit); past it, a `DataError`.
    Returns:
        the pairs, in file order.
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}", field="on_error")
    if isinstance(source, str | Path):
        path = Path(source)
        label = str(path)
        where = "row" if path.suffix.lower() in (".json", ".parquet") else "line"
        meter = _Meter(budget, label, where)
        rows: Iterator[tuple[int | None, Any]] = _read_file(path, meter)
    else:
        label = name or "<memory>"
        where = "row"
        meter = _Meter(budget, label, where)
        rows = _read_memory(source)
    metered_by_reader = isinstance(source, str | Path) and Path(source).suffix.lower() == ".parquet"
    pairs: list[PreferencePair] = []
    seen: dict[str, int | None] = {}
    skipped = 0
    for lineno, raw in rows:
        if not metered_by_reader:
            meter.add(1, text_chars(raw), lineno)
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


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, recorded in provenance so results name the exact data they came from."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    """Write pairs as JSONL in TRL's schema."""
    with open(path, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------- readers


def _read_file(path: Path, meter: _Meter) -> Iterator[tuple[int | None, Any]]:
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
        yield from _read_parquet(path, meter)
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
                try:
                    yield start, {h: _csv_cell(h, v, label, start) for h, v in zip(header, row, strict=True)}
                except DataError as err:
                    yield start, err
        start = reader.line_num + 1


def _csv_cell(key: str, value: str, label: str, line: int) -> Any:
    """A CSV cell as loaded: JSON is decoded only in the cells meant to hold one (prompt / chosen / rejected that
    look like a message list, rationales that look like a list of strings), so a plain-text answer such as
    `[1, 2, 3]` stays text; a cell that looks like JSON but does not decode is a `DataError` naming the field."""
    s = value.strip()
    pattern = _CSV_JSON_CELLS.get(key)
    if pattern is None or not pattern.match(s) or not s.endswith("]"):
        return value
    try:
        return json.loads(s)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, a 5000-digit number, [[[[...]]]] too deep
        what = "a list of strings" if key.startswith("rationale") else "a JSON list of {role, content} messages"
        raise DataError(f"invalid JSON ({type(err).__name__}: {str(err)[:200]})", source=label, line=line,
                        field=key, fix=f"write the cell as {what}, or as plain text that does not start with "
                        f"{s[:2]!r}") from None


PARQUET_BATCH_ROWS = 256


def _read_parquet(path: Path, meter: _Meter) -> Iterator[tuple[int | None, Any]]:
    """Rows of a Parquet file, one record batch at a time. String columns are read dictionary-encoded, so a value
    repeated over many rows is decoded once per batch (one Python string shared by those rows), and each batch's
    text is counted (in Arrow, before any Python string exists) against the budget."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        strings = [f.name for f in pf.schema_arrow if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        pf = pq.ParquetFile(path, read_dictionary=strings)
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS)
    except Exception as err:  # pyarrow raises many types for a damaged file
        raise DataError(f"cannot read Parquet ({type(err).__name__}: {err})", source=str(path),
                        fix="check that the file is a complete Parquet file") from None
    start = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as err:
            raise DataError(f"cannot read Parquet ({type(err).__name__}: {err})", source=str(path), line=start,
                            fix="check that the file is a complete Parquet file", unit="row") from None
        meter.add(batch.num_rows, sum(_arrow_chars(col) for col in batch.columns), start + batch.num_rows - 1)
        columns = [_arrow_values(col) for col in batch.columns]
        for i, values in enumerate(zip(*columns, strict=True)):
            yield start + i, dict(zip(batch.schema.names, values, strict=True))
        start += batch.num_rows


def _arrow_chars(arr: Any) -> int:
    """Characters of text an Arrow array decodes to (strings, also inside lists, structs and dictionaries),
    computed in Arrow without building Python strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        if pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type):
            lengths = pc.take(pc.utf8_length(arr.dictionary), arr.indices)
            return int(pc.sum(lengths).as_py() or 0)
        return _arrow_chars(arr.dictionary_decode())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return int(pc.sum(pc.utf8_length(arr)).as_py() or 0)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _arrow_chars(arr.flatten())
    if pa.types.is_struct(t):
        return sum(_arrow_chars(f) for f in arr.flatten())
    return 0


def _arrow_values(arr: Any) -> list[Any]:
    """An Arrow array as Python values; a dictionary-encoded one builds each distinct value once."""
    import pyarrow as pa

    if pa.types.is_dictionary(arr.type):
        distinct = arr.dictionary.to_pylist()
        return [None if i is None else distinct[i] for i in arr.indices.to_pylist()]
    return list(arr.to_pylist())


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
