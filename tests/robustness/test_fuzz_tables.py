"""The table readers on damaged and foreign files: a TableError naming the file, or a valid table; and any
text a token can own survives a write and read in every format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiviz.attribution import attribute
from tiviz.errors import TableError
from tiviz.table import COLUMNS, PROVENANCE_KEY, REQUIRED_VALUES, read_table, write_table
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer

from .strategies import damaged, fuzz, valid_text

FORMATS = ("parquet", "csv", "json")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    pairs = [{**p, "chosen": p["chosen"] + "\r\n\rend"} for p in tiny_pairs()[:2]]  # lone CR tokens included
    return attribute(tiny_model(seed=0), pairs, ["gradient", "attention"], tokenizer=tiny_tokenizer())


@pytest.fixture(scope="module")
def files(table, tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("tables")
    return {fmt: write_table(table, tmp / f"t.{fmt}").read_bytes() for fmt in FORMATS}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("table-fuzz")


def read_or_error(path: Path) -> pd.DataFrame | None:
    try:
        df = read_table(path)
    except TableError as err:
        assert str(path) in str(err)
        return None
    assert list(df.columns)[: len(COLUMNS)] == list(COLUMNS)
    assert not df[list(REQUIRED_VALUES)].isna().any().any()
    assert isinstance(df.attrs[PROVENANCE_KEY], dict)
    return df


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_every_value(table, tmp_path, fmt):
    back = read_table(write_table(table, tmp_path / f"t.{fmt}"))
    pd.testing.assert_frame_equal(back, table, check_exact=fmt == "parquet", rtol=1e-12)
    assert back.attrs[PROVENANCE_KEY] == json.loads(json.dumps(table.attrs[PROVENANCE_KEY], default=str))


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_cut_in_half_is_refused(files, tmp_path, fmt):
    path = tmp_path / f"half.{fmt}"
    path.write_bytes(files[fmt][: len(files[fmt]) // 2])
    with pytest.raises(TableError, match=r"cut short|cannot read") as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_csv_missing_whole_rows_is_refused(table, files, tmp_path):
    """A CSV cut at a row boundary parses cleanly; the row count written in its header gives it away."""
    path = tmp_path / "rows.csv"
    path.write_bytes(files["csv"].rsplit(b"\r\n", 6)[0] + b"\r\n")  # the last 5 rows (no line breaks in them)
    with pytest.raises(TableError, match=f"has {len(table) - 5} rows but was written with {len(table)}"):
        read_table(path)


def test_plain_csv_without_the_header_lines_still_reads(table, tmp_path):
    path = tmp_path / "plain.csv"
    plain = table[~table["text"].str.contains("\r")].reset_index(drop=True)  # pandas leaves a lone CR bare
    plain.to_csv(path, index=False)  # written by pandas, not tiviz: no provenance, no row count
    back = read_table(path)
    assert back[["pair_id", "position", "method", "text"]].equals(plain[["pair_id", "position", "method", "text"]])


@pytest.mark.parametrize(("make", "words"), [
    (lambda p: pd.DataFrame({"a": [1]}).to_parquet(p), "missing column"),
    (lambda p: pd.DataFrame(tiny_pairs()).to_parquet(p), "missing column"),  # a pairs file, not a table
    (lambda p: p.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1"), "cannot read as parquet"),
    (lambda p: p.write_bytes(b""), "cannot read as parquet"),
])
def test_foreign_parquet_is_named(tmp_path, make, words):
    path = tmp_path / "x.parquet"
    make(path)
    with pytest.raises(TableError, match=words) as info:
        read_table(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("text", "words"), [
    ("[1, 2]", "not a tiviz JSON table"),
    ('{"rows": 5}', "'rows' must be a list of objects"),
    ('{"rows": [], "provenance": [1]}', "provenance is a list"),
    ('{"rows": [{"pair_id": "a"}]}', "missing column"),
])
def test_foreign_json_is_named(tmp_path, text, words):
    path = tmp_path / "x.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TableError, match=words):
        read_table(path)


def test_missing_values_in_key_columns_are_named(table):
    from tiviz.table import validate

    broken = table.copy()
    broken["in_response"] = broken["in_response"].astype(object)
    broken.loc[3, "in_response"] = None  # astype(bool) would have made it True
    with pytest.raises(TableError, match="column 'in_response' is empty in 1 row"):
        validate(broken)
    fractional = table.copy()
    fractional["position"] = fractional["position"].astype(float)
    fractional.loc[2, "position"] = 2.5  # astype(int64) would have made it 2
    with pytest.raises(TableError, match="non-integer"):
        validate(fractional)


@pytest.mark.parametrize("fmt", FORMATS)
@fuzz(50)
@given(data=st.data())
def test_damaged_tables_read_or_raise_table_error(fmt, data, files, scratch, fuzz_counter):
    fuzz_counter[f"tables: damaged .{fmt}"] += 1
    path = scratch / f"damaged.{fmt}"
    path.write_bytes(data.draw(damaged(files[fmt])))
    read_or_error(path)


@fuzz(30)
@given(blob=st.binary(max_size=400), fmt=st.sampled_from(FORMATS))
def test_random_bytes_read_or_raise_table_error(blob, fmt, scratch, fuzz_counter):
    fuzz_counter["tables: random bytes"] += 1
    path = scratch / f"random.{fmt}"
    path.write_bytes(blob)
    read_or_error(path)


@pytest.mark.parametrize("fmt", FORMATS)
@fuzz(30)
@given(texts=st.lists(valid_text, min_size=1, max_size=6), model_id=valid_text)
def test_any_token_text_round_trips(fmt, texts, model_id, table, scratch, fuzz_counter):
    """Token texts and provenance strings with CR, NUL, quotes, commas, emoji, '#', 'NA' come back exactly."""
    fuzz_counter[f"tables: text round trip .{fmt}"] += 1
    df = table.copy()
    df["text"] = [texts[i % len(texts)] for i in range(len(df))]
    df["token"] = [texts[(i + 1) % len(texts)] for i in range(len(df))]
    df.attrs = {PROVENANCE_KEY: {**table.attrs[PROVENANCE_KEY], "model_id": model_id}}
    back = read_table(write_table(df, scratch / f"text.{fmt}"))
    assert back["text"].tolist() == df["text"].tolist()
    assert back["token"].tolist() == df["token"].tolist()
    assert np.allclose(back["score"], df["score"], rtol=1e-12, equal_nan=True)
    assert back.attrs[PROVENANCE_KEY]["model_id"] == model_id
