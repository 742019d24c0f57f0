"""The app reads Hugging Face `datasets` sources: a DatasetDict folder (with its split) is inspected like a file,
and an unreachable hub id shows a readable error that says the hub cannot be reached."""

from __future__ import annotations

import datasets
from apptools import FALLBACK_METHOD, token_blocks

from tiviz.testing import tiny_pairs


def test_saved_dataset_dict_is_inspected(new_app, tmp_path, monkeypatch):
    rows = tiny_pairs()
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[1:3])}).save_to_disk(str(folder))
    at = new_app()
    at.selectbox(key="dataset").set_value("Hugging Face dataset…").run()
    at.text_input(key="hf_source").input(str(folder)).run()
    [err] = at.error  # two splits and none chosen: the error says which exist
    assert "train, test" in err.value.replace("\\", "")
    at.text_input(key="hf_split").input("test").run()
    assert not at.exception and not at.error
    assert [o.split(" · ")[0] for o in at.selectbox(key="pair").options] == [r["id"] for r in rows[1:3]]
    assert token_blocks(at)[("chosen", FALLBACK_METHOD)] == rows[1]["chosen"]


def test_unreachable_hub_id_says_so(new_app, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    at = new_app()
    at.selectbox(key="dataset").set_value("Hugging Face dataset…").run()
    at.text_input(key="hf_source").input("trl-lib/ultrafeedback_binarized").run()
    assert not at.exception
    [err] = at.error
    assert "cannot be reached" in err.value and "looks offline" in err.value
