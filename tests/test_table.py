"""The tidy table: round trips through Parquet, CSV and JSON with provenance; contract violations are named."""

from __future__ import annotations

import pandas as pd
import pytest

from tiviz.attribution import attribute
from tiviz.errors import TableError
from tiviz.table import provenance, read_table, write_table


@pytest.fixture()
def table(tok, pairs, model):
    return attribute(model, pairs, ["gradient", "tidpo", "integrated_gradients"], tokenizer=tok, n_steps=2)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_round_trip(tmp_path, table, fmt):
    path = write_table(table, tmp_path / f"t.{fmt}")
    back = read_table(path)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), table.reset_index(drop=True), check_exact=False,
                                  rtol=1e-12)
    assert provenance(back) == provenance(table)
    assert back.text.str.contains("😊|é", regex=True).any()  # multi-byte text survives


def test_missing_column_and_bad_side(tmp_path, table):
    write_table(table.drop(columns=["weight"]), tmp_path / "x.parquet")
    with pytest.raises(TableError, match=r"missing column.*weight"):
        read_table(tmp_path / "x.parquet")
    bad = table.copy()
    bad.loc[0, "side"] = "left"
    write_table(bad, tmp_path / "y.csv")
    with pytest.raises(TableError, match="'side'"):
        read_table(tmp_path / "y.csv")


def test_unreadable_files(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(TableError, match="cannot read as parquet"):
        read_table(tmp_path / "t.parquet")
    (tmp_path / "t.json").write_text("[1, 2]")
    with pytest.raises(TableError, match="not a tiviz JSON table"):
        read_table(tmp_path / "t.json")
    with pytest.raises(TableError, match="cannot tell the format"):
        (tmp_path / "t.txt").write_text("x")
        read_table(tmp_path / "t.txt")
