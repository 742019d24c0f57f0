"""Loading preference pairs: every format, and bad input named by file, line and field."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from tiviz.data import load_pairs, save_pairs
from tiviz.errors import DataError
from tiviz.testing import tiny_pairs

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


GOOD = {"id": "a", "prompt": "Q?", "chosen": "Yes, Paris.", "rejected": "No, Rome.",
        "rationale_chosen": ["Paris"], "rationale_rejected": ["Rome"]}


def test_sample_data_loads_with_expected_counts():
    train = load_pairs(ROOT / "sample_data" / "train.jsonl")
    test = load_pairs(ROOT / "sample_data" / "test.jsonl")
    conv = load_pairs(ROOT / "sample_data" / "conversational.jsonl")
    assert (len(train), len(test), len(conv)) == (110, 40, 6)
    assert all(p.conversational for p in conv)
    assert not set(p.id for p in train) & set(p.id for p in test)
    cats = {p.extra["category"] for p in train + test}
    assert cats == {"helpfulness", "harmlessness", "factual", "math", "instruction_following", "code"}
    assert all(p.rationale_chosen and p.rationale_rejected for p in train + test)


def test_formats_agree(tmp_path):
    pairs = load_pairs(tiny_pairs())
    save_pairs(pairs, tmp_path / "p.jsonl")
    df = pd.DataFrame(tiny_pairs())
    df.to_parquet(tmp_path / "p.parquet")
    csv_df = df.copy()
    for col in ("rationale_chosen", "rationale_rejected"):
        csv_df[col] = csv_df[col].map(json.dumps)
    csv_df.to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "p.json").write_text(json.dumps(tiny_pairs()), encoding="utf-8")
    for src in ("p.jsonl", "p.parquet", "p.csv", "p.json"):
        loaded = load_pairs(tmp_path / src)
        assert [(p.id, p.prompt, p.chosen, p.rejected, p.rationale_chosen) for p in loaded] == [
            (p.id, p.prompt, p.chosen, p.rejected, p.rationale_chosen) for p in pairs], src
    assert [p.id for p in load_pairs(df)] == [p.id for p in pairs]


def test_conversational_pair():
    rec = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "assistant", "content": "Go."}], "rationale_chosen": ["Hello"]}
    (p,) = load_pairs([rec])
    assert p.conversational and p.response_text("chosen") == "Hello!"


@pytest.mark.parametrize(
    ("rows", "line", "field", "words"),
    [
        ([GOOD, "{not json"], 2, None, "invalid JSON"),
        ([GOOD, {k: v for k, v in GOOD.items() if k != "chosen"} | {"id": "b"}], 2, "chosen", "missing"),
        ([{**GOOD, "rejected": "   "}], 1, "rejected", "empty"),
        ([{**GOOD, "prompt": 42}], 1, "prompt", "must be text"),
        ([{**GOOD, "rationale_chosen": ["Lyon"]}], 1, "rationale_chosen", "not a substring"),
        ([{**GOOD, "rationale_rejected": "Rome"}, {**GOOD, "id": "a"}], 2, "id", "duplicate"),
        (["[1, 2]"], 1, None, "expected an object"),
    ],
)
def test_bad_jsonl_names_file_line_field(tmp_path, rows, line, field, words):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    err = info.value
    assert err.source == str(path) and err.line == line and err.field == field
    assert words in str(err) and str(path) in str(err) and f"line {line}" in str(err)


def test_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_pairs(tmp_path / "empty.jsonl")
    good = json.dumps(GOOD).encode()
    (tmp_path / "latin1.jsonl").write_bytes(good + b"\n" + good.replace(b"Paris", b"Par\xe9s"))
    with pytest.raises(DataError) as info:
        load_pairs(tmp_path / "latin1.jsonl")
    assert info.value.line == 2 and "UTF-8" in str(info.value)


def test_csv_reports_the_physical_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,prompt,chosen,rejected\na,"multi\nline",yes,no\nb,q,,no\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert (info.value.line, info.value.field) == (4, "chosen")


def test_skip_mode_keeps_good_rows_and_warns(tmp_path, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, "{oops", {**GOOD, "id": "c", "chosen": ""}, {**GOOD, "id": "d"}])
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(path, on_error="skip")
    assert [p.id for p in pairs] == ["a", "d"]
    assert "skipped 2 bad pair(s)" in caplog.text and "line 2" in caplog.text and "line 3" in caplog.text


def test_skip_mode_with_nothing_valid_still_fails(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(DataError, match="no valid preference pairs"):
        load_pairs(path, on_error="skip")


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unknown file type"):
        load_pairs(tmp_path / "x.txt")
