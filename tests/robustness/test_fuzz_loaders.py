"""The pair loaders on hostile input: every file or record either loads or raises a DataError that names the
file, where in it, and (for a bad field) the field. A corpus of real-world breakage, then generated input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiviz.data import REQUIRED, PreferencePair, load_pairs, save_pairs
from tiviz.errors import DataError

from .conftest import CORPUS
from .strategies import damaged, field_text, fuzz, records

PAIRS_DIR = CORPUS / "pairs"
EXPECTED = json.loads((PAIRS_DIR / "expected.json").read_text(encoding="utf-8"))
GOOD_ROWS = [
    {"id": "a", "prompt": "Q, with a comma?", "chosen": "Yes \"quoted\"\r\nsecond line 😊",
     "rejected": "No.", "rationale_chosen": ["Yes"]},
    {"id": "b", "prompt": "مرحبا", "chosen": "e\u0301 👩\u200d👩\u200d👧", "rejected": "x\u2028y"},
]


def check_error(err: DataError, path: Path) -> None:
    """What every loader error must carry: the file, and a line/row inside it when it blames one."""
    assert err.source == str(path)
    assert str(path) in str(err)
    if err.line is not None:
        assert f"{err.unit} {err.line}" in str(err)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_loads_or_names_the_problem(name):
    path = PAIRS_DIR / name
    want = EXPECTED[name]
    if "pairs" in want:
        pairs = load_pairs(path)
        assert len(pairs) == want["pairs"]
        return
    with pytest.raises(DataError) as info:
        load_pairs(path)
    err = info.value
    check_error(err, path)
    assert (err.line, err.field) == (want["line"], want["field"])
    assert err.unit == want.get("unit", "line")
    assert want["words"] in str(err)


def test_corpus_texts_survive_crlf_bom_and_line_separators():
    (bom,) = load_pairs(PAIRS_DIR / "bom.csv")
    assert bom.id == "a" and bom.prompt == "multi\r\nline, with comma" and bom.chosen == 'She said "hi"'
    first, _ = load_pairs(PAIRS_DIR / "u2028_in_string.jsonl")
    assert first.chosen == "one\u2028two\u2029three\x85four"  # was split into three broken lines before
    (emoji,) = load_pairs(PAIRS_DIR / "emoji_escape_pair.jsonl")
    assert emoji.chosen == "😀 smile"


def test_csv_field_over_the_csv_module_limit_loads(tmp_path):
    long = "word " * 40_000  # 200 kB in one cell; Python's csv refuses fields over 128 kB by default
    path = tmp_path / "long.csv"
    pd.DataFrame([{"prompt": "Q", "chosen": long, "rejected": "no"}]).to_csv(path, index=False)
    (pair,) = load_pairs(path)
    assert pair.chosen == long


def test_unquoted_lone_cr_is_named_not_misread(tmp_path):
    """pandas' to_csv writes a cell holding a lone \r unquoted; every CSV reader sees a line break there."""
    path = tmp_path / "bare_cr.csv"
    pd.DataFrame([{"prompt": "Q", "chosen": "\rstarts with CR", "rejected": "no"}]).to_csv(path, index=False)
    assert b",\rstarts" in path.read_bytes()
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert info.value.line == 2 and "expected 3 columns, found 2" in str(info.value)


@pytest.mark.parametrize("source", [5, None, 3.5, b"bytes", object()])
def test_in_memory_source_of_the_wrong_kind(source):
    with pytest.raises(DataError, match="expected a file path, a DataFrame or a list of dicts"):
        load_pairs(source)


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_parquet_that_is_not_a_pair_table(tmp_path):
    path = write_parquet(tmp_path / "scores.parquet", [{"pair_id": "a", "score": 0.5}])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    check_error(info.value, path)
    assert (info.value.unit, info.value.line, info.value.field) == ("row", 0, "prompt")


def test_parquet_with_wrong_cell_types(tmp_path):
    path = write_parquet(tmp_path / "ints.parquet", [{"prompt": "Q", "chosen": "a", "rejected": "b"},
                                                     {"prompt": "Q", "chosen": "a", "rejected": None}])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert (info.value.line, info.value.field) == (1, "rejected") and "row 1" in str(info.value)


# ---------------------------------------------------------------------------------------------- generated


def make_valid_file(tmp: Path, fmt: str) -> Path:
    path = tmp / f"valid.{fmt}"
    if fmt == "jsonl":
        save_pairs(load_pairs(GOOD_ROWS), path)
    elif fmt == "json":
        path.write_text(json.dumps(GOOD_ROWS, ensure_ascii=False), encoding="utf-8")
    elif fmt == "csv":
        df = pd.DataFrame(GOOD_ROWS)
        df["rationale_chosen"] = df["rationale_chosen"].map(lambda v: json.dumps(v) if isinstance(v, list) else "")
        df.to_csv(path, index=False)
    else:
        pd.DataFrame(GOOD_ROWS).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("valid")
    return {fmt: make_valid_file(tmp, fmt).read_bytes() for fmt in ("jsonl", "json", "csv", "parquet")}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load_or_error(path: Path) -> list[PreferencePair] | DataError:
    """Load; a DataError is a fine outcome and is returned; any other exception fails the test."""
    try:
        return load_pairs(path)
    except DataError as err:
        check_error(err, path)
        return err


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
@fuzz(60)
@given(data=st.data())
def test_damaged_files_load_or_raise_data_error(fmt, data, valid_files, scratch, fuzz_counter):
    fuzz_counter[f"loaders: damaged .{fmt} file"] += 1
    blob = data.draw(damaged(valid_files[fmt]))
    path = scratch / f"damaged.{fmt}"
    path.write_bytes(blob)
    out = load_or_error(path)
    if not isinstance(out, DataError):
        for pair in out:  # whatever loads is valid: non-empty texts, no NUL
            for key in REQUIRED:
                text = getattr(pair, key)
                assert text and (not isinstance(text, str) or (text.strip() and "\x00" not in text))


@fuzz(40)
@given(blob=st.binary(max_size=300), fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]))
def test_random_bytes_load_or_raise_data_error(blob, fmt, scratch, fuzz_counter):
    fuzz_counter["loaders: random bytes"] += 1
    path = scratch / f"random.{fmt}"
    path.write_bytes(blob)
    load_or_error(path)


@fuzz(80)
@given(rows=st.lists(records(), min_size=1, max_size=4), on_error=st.sampled_from(["raise", "skip"]))
def test_arbitrary_records_load_or_name_the_field(rows, on_error, fuzz_counter):
    fuzz_counter["loaders: arbitrary records"] += 1
    try:
        pairs = load_pairs(rows, on_error=on_error, name="fuzz")
    except DataError as err:
        assert err.source == "fuzz"
        if err.field is not None:
            assert err.field in {*REQUIRED, "id", "rationale_chosen", "rationale_rejected", "category"}
            assert err.unit == "row" and err.line is not None and f"row {err.line}" in str(err)
        return
    assert 1 <= len(pairs) <= len(rows)
    assert len({p.id for p in pairs}) == len(pairs)


@st.composite
def good_rows(draw: st.DrawFn) -> list[dict]:
    n = draw(st.integers(1, 3))
    rows = []
    for i in range(n):
        row = {"id": f"r{i}", "prompt": draw(field_text), "chosen": draw(field_text), "rejected": draw(field_text)}
        if row["chosen"].strip() and draw(st.booleans()):
            row["rationale_chosen"] = [row["chosen"]]
        rows.append(row)
    return rows


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
@fuzz(40)
@given(rows=good_rows())
def test_any_valid_text_round_trips_through_every_format(fmt, rows, scratch, fuzz_counter):
    """CRLF, lone CR, U+2028, BOMs, quotes and commas inside the text come back exactly, in every format."""
    fuzz_counter[f"loaders: round trip .{fmt}"] += 1
    path = scratch / f"roundtrip.{fmt}"
    if fmt == "jsonl":
        save_pairs(load_pairs(rows), path)
    elif fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif fmt == "csv":
        df = pd.DataFrame(rows)
        if "rationale_chosen" in df:
            df["rationale_chosen"] = df["rationale_chosen"].map(lambda v: json.dumps(v) if isinstance(v, list) else "")
        # "\r\n" row ends make the writer quote cells holding a lone \r (pandas' default "\n" leaves them bare,
        # and then no reader can tell them from a line break: see test_unquoted_lone_cr_is_named_not_misread)
        df.to_csv(path, index=False, lineterminator="\r\n")
    else:
        pd.DataFrame(rows).to_parquet(path)
    try:
        loaded = load_pairs(path)
    except DataError as err:
        # a refusal by design: a CSV cell that reads as a JSON list is taken for messages or rationales
        cell = str(rows[err.line - 2][err.field]).strip() if err.line and err.field else ""
        assert fmt == "csv" and cell.startswith("[") and cell.endswith("]"), err
        return
    got = [(p.id, p.prompt, p.chosen, p.rejected, p.rationale_chosen) for p in loaded]
    want = [(r["id"], r["prompt"], r["chosen"], r["rejected"], tuple(r.get("rationale_chosen", ())))
            for r in rows]
    assert got == want
