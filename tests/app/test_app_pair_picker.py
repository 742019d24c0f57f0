"""The pair picker at scale: a pair is found by id without scanning the dataset, and a large dataset is picked
through a search box and pages of at most `PAGE` options instead of one list of every pair."""

from __future__ import annotations

import json

from app import state
from app.app_pages import pickers
from tiviz.data import load_pairs


def many_pairs_jsonl(n: int) -> bytes:
    rows = [{"id": f"p-{i:05d}", "prompt": f"Question number {i}?", "chosen": "Yes.", "rejected": "No."}
            for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class CountingTuple(tuple):
    """A tuple that counts how often it is walked through."""

    walks = 0

    def __iter__(self):
        CountingTuple.walks += 1
        return super().__iter__()


def test_pair_lookup_does_not_scan(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(many_pairs_jsonl(2000))
    ds = state.Dataset(name="p.jsonl", key="k", path=str(path), pairs=CountingTuple(load_pairs(path)))
    CountingTuple.walks = 0
    for i in range(0, 2000, 7):
        assert ds.pair(f"p-{i:05d}").id == f"p-{i:05d}"
        assert ds.has(f"p-{i:05d}")
    assert not ds.has("nope")
    assert CountingTuple.walks <= 1  # one walk to build the index, none per lookup


def test_find_matches_ids_and_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(many_pairs_jsonl(3000))
    ds = state.load_upload("p.jsonl", path.read_bytes(), tmp_path)
    assert ds.find("p-0299", limit=5) == [f"p-0299{d}" for d in range(5)]
    assert ds.find("question NUMBER 2999") == ["p-02999"]  # case-insensitive, in the prompt too
    assert ds.find("", limit=3) == ["p-00000", "p-00001", "p-00002"]


def upload(at, name: str, data: bytes):
    at.selectbox(key="dataset").set_value("upload a file…").run()
    at.file_uploader(key="upload").upload(name, data, "application/octet-stream")
    return at.run()


def test_a_large_dataset_is_picked_by_search_and_pages(new_app):
    at = new_app()
    upload(at, "many.jsonl", many_pairs_jsonl(3000))
    assert not at.exception, [e.value for e in at.exception]
    picker = at.selectbox(key="pair")
    assert len(picker.options) <= pickers.PAGE < 3000
    assert picker.value == "p-00000"
    at.text_input(key="pair_search").input("p-0299").run()
    assert not at.exception
    options = at.selectbox(key="pair").options
    assert "p-02999" in " ".join(options) and len(options) <= 11  # the matches (and the current pair)
    at.selectbox(key="pair").select("p-02999").run()
    assert at.session_state["pair"] == "p-02999" and not at.exception
    at.text_input(key="pair_search").input("").run()
    at.number_input(key="pair_page").set_value(3).run()  # pairs 2001 to 3000
    options = at.selectbox(key="pair").options
    assert any(o.startswith("p-02500") for o in options) and not any(o.startswith("p-00000") for o in options)
    assert at.session_state["pair"] == "p-02999"  # paging does not change the pair shown


def test_a_small_dataset_keeps_one_plain_list(new_app):
    at = new_app()
    upload(at, "few.jsonl", many_pairs_jsonl(12))
    assert len(at.selectbox(key="pair").options) == 12
    assert not [t for t in at.text_input if t.key == "pair_search"]
