"""The shared results cache is keyed by content, so two sessions that upload the same bytes under different
names share one computed table; the provenance each of them reads (and exports) names its own file."""

from __future__ import annotations

import json

from app import state
from tiviz.table import PROVENANCE_KEY


def test_each_session_reads_its_own_file_name_in_the_provenance(app_env, tmp_path):
    state.result_cache.clear()
    data = (json.dumps({"id": "p1", "prompt": "Q?", "chosen": "Yes.", "rejected": "No."}) + "\n").encode()
    for who in ("a", "b"):
        (tmp_path / who).mkdir()
    alice = state.load_upload("alice-private-notes.jsonl", data, tmp_path / "a")
    bob = state.load_upload("bob.jsonl", data, tmp_path / "b")
    assert alice.key == bob.key  # same content: one cache entry
    choice = state.base_choice()
    first = state.attribution(choice, alice, ["p1"], ["gradient"])
    assert first.attrs[PROVENANCE_KEY]["data"]["file"] == "alice-private-notes.jsonl"
    hit = state.cached_attribution(choice, bob, ["p1"], ["gradient"])
    assert hit is not None and hit.attrs[PROVENANCE_KEY]["data"]["file"] == "bob.jsonl"
    again = state.attribution(choice, bob, ["p1"], ["gradient"])
    assert again.attrs[PROVENANCE_KEY]["data"] == {"file": "bob.jsonl", "sha256": bob.key, "n_pairs": 1}
    exported = state.table_bytes(again, "json", tmp_path)
    assert b"alice" not in exported and b"bob.jsonl" in exported
    # two methods combined: the reader's name too, and reading for bob never rewrote alice's table
    both = state.attribution(choice, bob, ["p1"], ["gradient", "attention"])
    assert both.attrs[PROVENANCE_KEY]["data"]["file"] == "bob.jsonl"
    assert state.attribution(choice, alice, ["p1"], ["gradient"]).attrs[PROVENANCE_KEY]["data"]["file"] == \
        "alice-private-notes.jsonl"
