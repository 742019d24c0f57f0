"""app/state.py without a session: cache keys, the result cache, markdown escaping, error wording."""

from __future__ import annotations

import re

import pandas as pd

from app import state
from tiviz.errors import DataError


def test_ig_settings_only_key_integrated_gradients(app_env, tiny_model_folder):
    ds = state.load_sample("sample: test")
    base = state.base_choice()
    assert state.attribution_key(base, ds, ["a"], "tidpo", {"n_steps": 8}) == \
        state.attribution_key(base, ds, ["a"], "tidpo", None)
    assert state.attribution_key(base, ds, ["a"], "integrated_gradients", {"n_steps": 8}) != \
        state.attribution_key(base, ds, ["a"], "integrated_gradients", {"n_steps": 16})
    assert state.attribution_key(base, ds, ["a"], "tidpo", {"lam": 0.5}) != \
        state.attribution_key(base, ds, ["a"], "tidpo", None)
    assert base.key == f"base:{tiny_model_folder}" and not base.has_reference


def test_result_cache_is_lru():
    cache = state.ResultCache(max_entries=2)
    frames = [pd.DataFrame({"x": [i]}) for i in range(3)]
    cache.put(("a",), frames[0])
    cache.put(("b",), frames[1])
    assert cache.get(("a",)) is frames[0]  # a is now the most recent
    cache.put(("c",), frames[2])
    assert cache.get(("b",)) is None and cache.get(("a",)) is frames[0] and len(cache) == 2


def test_md_literal_neutralises_markdown():
    text = "[x](javascript:alert(1)) **b** <i>i</i> :red[r] $x$ `c` # h"
    out = state.md_literal(text)
    assert re.sub(r"\\(.)", r"\1", out) == text  # only backslashes added
    assert all(out[i - 1] == "\\" for i, ch in enumerate(out) if ch in "[]()*<>:$`#" and i > 0)


def test_describe_error_names_everything():
    err = DataError("missing field", source="a_b.jsonl", line=3, field="chosen", fix="add it")
    text = state.describe_error(err)
    assert text.splitlines() == [r"**Could not load a\_b\.jsonl**: missing field", "- line: 3",
                                 "- field: chosen", "- fix: add it"]


def test_session_folder_goes_with_its_owner(tmp_path):
    import gc

    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "upload.jsonl").write_text("{}")
    owner = state.SessionFolder(str(folder))
    assert folder.exists()
    del owner
    gc.collect()
    assert not folder.exists()
