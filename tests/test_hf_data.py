"""Hugging Face `datasets` as a source: save_to_disk folders (Dataset and DatasetDict with a split), Dataset
objects, streaming limits, validation errors naming row and field, and a hub id failing fast offline."""

from __future__ import annotations

import json
import time

import datasets
import pytest

from tiviz.cli import main
from tiviz.data import load_pairs
from tiviz.errors import DataError
from tiviz.hf_data import is_hf_source
from tiviz.models import save_model
from tiviz.table import provenance, read_table
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_model(tiny_model(), folder, tokenizer=tiny_tokenizer())
    return folder


def _dataset(rows=None):
    return datasets.Dataset.from_list(rows if rows is not None else tiny_pairs())


def test_saved_dataset_folder_loads_like_the_file(tmp_path):
    folder = tmp_path / "ds"
    _dataset().save_to_disk(str(folder))
    assert is_hf_source(folder) and is_hf_source(str(folder))
    pairs = load_pairs(folder)
    expected = load_pairs(tiny_pairs())
    assert [(p.id, p.prompt, p.chosen, p.rejected) for p in pairs] == \
        [(p.id, p.prompt, p.chosen, p.rejected) for p in expected]
    assert pairs[0].source == str(folder)


def test_dataset_dict_needs_a_split_when_it_has_several(tmp_path):
    folder = tmp_path / "dd"
    rows = tiny_pairs()
    datasets.DatasetDict({"train": _dataset(rows[:2]), "test": _dataset(rows[2:])}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"holds the splits train, test.*--split"):
        load_pairs(folder)
    with pytest.raises(DataError, match=r"no split 'dev'"):
        load_pairs(folder, split="dev")
    test = load_pairs(folder, split="test")
    assert [p.id for p in test] == [r["id"] for r in rows[2:]]


def test_dataset_object_and_limit(tmp_path):
    ds = _dataset()
    assert is_hf_source(ds)
    assert [p.id for p in load_pairs(ds, limit=2)] == [r["id"] for r in tiny_pairs()[:2]]
    streamed = ds.to_iterable_dataset()
    assert len(load_pairs(streamed, limit=1)) == 1


def test_limit_reads_only_that_many_rows():
    """A streamed source is consumed lazily: with limit=3 only 3 rows (and no more) are pulled."""
    pulled = []

    def gen():
        for i in range(1_000_000):
            pulled.append(i)
            yield {"id": i, "prompt": "p", "chosen": "a", "rejected": "b"}

    ds = datasets.IterableDataset.from_generator(gen)
    assert len(load_pairs(ds, limit=3)) == 3
    assert len(pulled) < 10  # datasets may read one row ahead, never the whole generator


def test_bad_row_names_row_and_field():
    rows = tiny_pairs()
    rows[1] = {**rows[1], "chosen": ""}
    with pytest.raises(DataError) as err:
        load_pairs(_dataset(rows))
    assert err.value.line == 1 and err.value.field == "chosen" and "row 1" in str(err.value)


def test_implicit_prompt_rows_get_the_shared_turns_as_prompt():
    user = {"role": "user", "content": "How long is a centimetre?"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "A hundredth of a metre."}],
             "rejected": [user, {"role": "assistant", "content": "A mile."}]}]
    pair = load_pairs(_dataset(rows))[0]
    assert pair.prompt == [user]
    assert pair.chosen == [{"role": "assistant", "content": "A hundredth of a metre."}]


def test_hub_id_fails_fast_and_says_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # never resolves, wherever the test runs
    assert is_hf_source("trl-lib/ultrafeedback_binarized")
    start = time.monotonic()
    with pytest.raises(DataError, match=r"cannot be reached.*looks offline") as err:
        load_pairs("trl-lib/ultrafeedback_binarized", split="test", limit=100)
    assert time.monotonic() - start < 15  # a bound on hanging, not a speed claim: datasets' retries take ~60 s
    assert "trl-lib/ultrafeedback_binarized [test]" in str(err.value) and "save_to_disk" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        load_pairs("trl-lib/ultrafeedback_binarized")


def test_missing_local_paths_are_not_hub_ids(tmp_path):
    assert not is_hf_source("sample_data/missing")  # sample_data exists: a missing local folder
    assert not is_hf_source("owner/pairs.jsonl")
    assert not is_hf_source(str(tmp_path))  # a folder without save_to_disk files
    with pytest.raises(DataError, match="file not found"):
        load_pairs("sample_data/missing.jsonl")


def test_cli_attributes_a_saved_dataset_dict(tmp_path, tiny_folder):
    folder = tmp_path / "dd"
    rows = tiny_pairs()
    datasets.DatasetDict({"train": _dataset(rows), "test": _dataset(rows[:2])}).save_to_disk(str(folder))
    out = tmp_path / "res.parquet"
    assert main(["attribute", "--pairs", str(folder), "--split", "test", "--model", str(tiny_folder),
                 "--methods", "gradient", "--out", str(out), "--no-cache"]) == 0
    df = read_table(out)
    assert set(df.pair_id) == {r["id"] for r in rows[:2]}
    data = provenance(df)["data"]
    assert data["dataset"] == str(folder) and data["split"] == "test" and data["n_pairs"] == 2
    assert data["fingerprint"]
    json.dumps(data)  # provenance stays serialisable


def test_cli_split_with_a_file_is_refused(tmp_path, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in tiny_pairs()), encoding="utf-8")
    assert main(["attribute", "--pairs", str(pairs), "--split", "test"]) == 2
    assert "--split only with a datasets folder" in capsys.readouterr().err
