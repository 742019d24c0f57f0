"""The tidy-table contract: one row per (pair_id, side, position, method), read and written as Parquet, CSV
or JSON with the provenance (model, methods, target, settings, tiviz version) carried along."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tiviz.errors import TableError
from tiviz.files import fsync

PROVENANCE_KEY = "tiviz"
CSV_HEADER = "# tiviz-provenance: "
CSV_ROWS = "# tiviz-rows: "  # second line of a tiviz CSV: a file cut short has fewer rows than it says

COLUMNS: dict[str, str] = {
    "pair_id": "string",  # the pair's id
    "side": "string",  # "chosen" or "rejected"
    "position": "int64",  # index of the token in the (unpadded) sequence
    "token_id": "int64",
    "token": "string",  # the tokenizer's piece
    "text": "string",  # the original text the token owns (may be empty)
    "char_start": "int64",  # span in the prompt text (prompt tokens) or the response text (response tokens)
    "char_end": "int64",
    "in_response": "bool",
    "method": "string",
    "score": "float64",  # the method's raw score (signed for grad_x_input, integrated_gradients, rewards)
    "weight": "float64",  # |score| normalised to sum 1 over the response tokens of (pair, side, method)
    "target_value": "float64",  # the explained scalar f(x) for the sequence (NaN where not applicable)
    "convergence_delta": "float64",  # integrated gradients: sum(attr) - (f(x) - f(baseline)); else NaN
}
KEY = ["pair_id", "side", "position", "method"]
# Columns that must hold a value in every row; NaN is meaningful only in the float columns (weight of a prompt
# token, target of attention). A missing bool would otherwise be cast to True, a missing int fail obscurely.
REQUIRED_VALUES = ("pair_id", "side", "position", "token_id", "token", "text", "char_start", "char_end",
                   "in_response", "method")
FORMATS = ("parquet", "csv", "json")


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def validate(df: pd.DataFrame, *, source: str = "table") -> pd.DataFrame:
    """Check columns and types, cast to the contract's dtypes; raises `TableError` naming what is wrong."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TableError(f"{source}: missing column(s) {', '.join(missing)}. Fix: use a table written by tiviz")
    for col in REQUIRED_VALUES:
        empty = df[col].isna().to_numpy()
        if empty.any():
            raise TableError(f"{source}: column {col!r} is empty in {int(empty.sum())} row(s), first at row "
                             f"{int(empty.argmax())}. Fix: use a complete table written by tiviz "
                             "(was it cut short?)")
    for col, dtype in COLUMNS.items():
        if dtype == "int64" and pd.api.types.is_float_dtype(df[col]):
            fractional = (df[col] % 1 != 0).to_numpy()
            if fractional.any():  # astype would silently round 1.5 down to 1
                row = int(fractional.argmax())
                raise TableError(f"{source}: column {col!r} holds a non-integer ({float(df[col].iloc[row])!r} at "
                                 f"row {row}). Fix: use a table written by tiviz")
    try:
        out = df.astype({c: t for c, t in COLUMNS.items()})
    except (ValueError, TypeError) as err:
        raise TableError(f"{source}: a column has the wrong type ({err})") from None
    bad_side = set(out["side"].dropna().unique()) - {"chosen", "rejected"}
    if bad_side:
        raise TableError(f"{source}: column 'side' has {sorted(bad_side)!r}; allowed 'chosen', 'rejected'")
    if out.duplicated(KEY).any():
        raise TableError(f"{source}: duplicate rows for (pair_id, side, position, method)")
    out.attrs = dict(df.attrs)
    return out


def provenance(df: pd.DataFrame) -> dict[str, Any]:
    return dict(df.attrs.get(PROVENANCE_KEY, {}))


def write_table(df: pd.DataFrame, path: str | Path, fmt: str | None = None) -> Path:
    """Write the table with its provenance: Parquet (key/value metadata), CSV (a first comment line), JSON."""
    path = Path(path)
    fmt = fmt or _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = json.dumps(provenance(df), default=str)
    if fmt not in FORMATS:
        raise TableError(f"{path}: unknown format {fmt!r}. Fix: use one of {', '.join(FORMATS)}")
    # Write beside the target under a name no other process uses, flush it to disk, then rename: a reader (or a
    # run killed mid-write) sees the old file or the whole new one, never half of one.
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            meta = dict(table.schema.metadata or {})
            meta.pop(b"pandas", None)  # attrs would also land there; keep one copy
            meta[PROVENANCE_KEY.encode()] = prov.encode()
            pq.write_table(table.replace_schema_metadata(meta), tmp)
            fsync(tmp)
        elif fmt == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.write(CSV_HEADER + prov + "\n")
                fh.write(f"{CSV_ROWS}{len(df)}\n")
                # With "\r\n" as the row end, the csv writer quotes every cell holding a \r or a \n; with
                # pandas' default "\n" a token owning a lone \r was written bare and split its row in two.
                df.to_csv(fh, index=False, lineterminator="\r\n")
                fh.flush()
                os.fsync(fh.fileno())
        else:
            records = json.loads(df.to_json(orient="records", force_ascii=False))
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"provenance": json.loads(prov), "rows": records}, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync(path.parent)
    return path


def read_table(path: str | Path, fmt: str | None = None) -> pd.DataFrame:
    """Read a table written by `write_table`, validating it and restoring the provenance into `df.attrs`."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: file not found. Fix: check the path")
    fmt = fmt or _format_of(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            prov = json.loads(meta.get(PROVENANCE_KEY.encode(), b"{}"))
            df = table.to_pandas()
        elif fmt == "csv":
            with open(path, encoding="utf-8", newline="") as fh:
                text = fh.read()
            prov, expected_rows, body = _split_csv_header(text, path)
            df = pd.read_csv(io.StringIO(body, newline=""), keep_default_na=False, na_values={
                "score": ["", "NaN"], "weight": ["", "NaN"], "target_value": ["", "NaN"],
                "convergence_delta": ["", "NaN"]})
            if expected_rows is not None and len(df) != expected_rows:
                raise TableError(f"{path}: has {len(df)} rows but was written with {expected_rows}. "
                                 "Fix: the file was cut short or edited; write it again")
        elif fmt == "json":
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or "rows" not in data:
                raise TableError(f"{path}: not a tiviz JSON table (no 'rows'). Fix: use a file written by tiviz")
            prov = data.get("provenance", {})
            rows = data["rows"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise TableError(f"{path}: 'rows' must be a list of objects. Fix: use a file written by tiviz")
            df = pd.DataFrame(rows) if rows else empty_table()
        else:
            raise TableError(f"{path}: unknown format {fmt!r}. Fix: use one of {', '.join(FORMATS)}")
    except TableError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TableError(f"{path}: cannot read as {fmt} ({type(err).__name__}: {err})") from None
    except Exception as err:  # pyarrow / pandas parse errors come in many types
        raise TableError(f"{path}: cannot read as {fmt} ({type(err).__name__}: {err})") from None
    if not isinstance(prov, dict):
        raise TableError(f"{path}: the provenance is a {type(prov).__name__}, not an object. "
                         "Fix: use a file written by tiviz")
    df = validate(df, source=str(path))
    df.attrs[PROVENANCE_KEY] = prov
    return df


def _split_csv_header(text: str, path: Path) -> tuple[Any, int | None, str]:
    """(provenance, declared row count or None, the CSV body) of a CSV table; plain CSVs have neither line."""
    prov: Any = {}
    rows: int | None = None
    if text.startswith(CSV_HEADER):
        first, _, text = text.partition("\n")
        prov = json.loads(first[len(CSV_HEADER):])
        if text.startswith(CSV_ROWS):
            second, _, text = text.partition("\n")
            try:
                rows = int(second[len(CSV_ROWS):])
            except ValueError:
                raise TableError(f"{path}: bad row count line {second!r}. Fix: use a file written by tiviz") from None
    return prov, rows, text


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise TableError(f"{path}: cannot tell the format from {path.suffix or 'no suffix'!r}. "
                         f"Fix: use .parquet, .csv or .json, or pass the format")
    return suffix
