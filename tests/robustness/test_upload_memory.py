"""An upload's size bounds its memory: Parquet is read in record batches against a budget of decoded characters
and rows (the app sets one; the CLI none, but still streams and shares repeated strings), and a field is cut to
what `max_length` tokens can hold before it is tokenised, with the same tokens and the usual warning."""

from __future__ import annotations

import json
import logging
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tiviz.data as data
import tiviz.tokenization as tokenization
from tiviz.data import load_pairs
from tiviz.errors import DataError
from tiviz.tokenization import encode

PROMPT = "lorem ipsum dolor sit amet " * 3800  # about 100 KB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """2,000 rows sharing one 100 KB prompt, dictionary-encoded and zstd-compressed: a few KB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.parquet"
    n = 2000
    table = pa.table({"id": [f"p{i}" for i in range(n)], "prompt": pa.array([PROMPT] * n).dictionary_encode(),
                      "chosen": ["Yes."] * n, "rejected": ["No."] * n})
    pq.write_table(table, path, compression="zstd", use_dictionary=True)
    assert path.stat().st_size < 20_000
    return path


def peak_mb(fn):
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak / 2**20


def test_a_budget_refuses_the_parquet_bomb_before_decoding_it(bomb):
    budget = data.ReadBudget(max_chars=10_000_000, fix="raise the limit")
    with pytest.raises(DataError) as err:
        peak_mb(lambda: load_pairs(bomb, budget=budget))
    text = str(err.value)
    assert err.value.source == str(bomb) and "10,000,000 characters" in text and "raise the limit" in text
    tracemalloc.start()
    try:
        with pytest.raises(DataError):
            load_pairs(bomb, budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak / 2**20 < 30  # MB of Python objects: the 200 MB of text were never built


def test_without_a_budget_the_bomb_loads_streaming_and_shared(bomb):
    pairs, peak = peak_mb(lambda: load_pairs(bomb))
    assert len(pairs) == 2000 and pairs[-1].prompt == PROMPT and pairs[-1].id == "p1999"
    assert peak < 60  # MB; one Python string per row would be 2,000 x 100 KB = 200 MB


def test_a_row_budget_names_the_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n" for _ in range(30)))
    with pytest.raises(DataError) as err:
        load_pairs(path, budget=data.ReadBudget(max_rows=20))
    assert err.value.line == 21 and "more than 20 pairs" in str(err.value)
    assert len(load_pairs(path, budget=data.ReadBudget(max_rows=30))) == 30


def test_the_app_refuses_the_bomb_with_its_setting(bomb, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from app import state

    with pytest.raises(DataError) as err:
        state.load_upload("bomb.parquet", bomb.read_bytes(), tmp_path)
    assert err.value.source == "bomb.parquet" and "TIVIZ_APP_MAX_TEXT_MB" in str(err.value)
    monkeypatch.setenv("TIVIZ_APP_MAX_TEXT_MB", "400")
    assert len(state.load_upload("bomb.parquet", bomb.read_bytes(), tmp_path).pairs) == 2000


class Recording:
    """A tokenizer wrapper that records the length of every text it is asked to tokenise."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def __call__(self, text, **kw):
        self.lengths.append(len(text))
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_a_huge_field_is_cut_before_tokenising(tok, mode, caplog):
    huge = "word " * 400_000  # 2 MB
    rec = Recording(tok)
    with caplog.at_level(logging.WARNING, logger="tiviz.tokenization"):
        seq = encode(rec, "Q: " + huge, huge, max_length=64, truncation_mode=mode, label="pair 'big' (chosen)")
    assert max(rec.lengths) <= tokenization.cut_bound(64) + 64 < 100_000
    assert len(seq) == 64 and seq.truncated > 0 and seq.response_text == huge
    assert "pair 'big' (chosen): sequence of more than" in caplog.text and "truncated to max_length=64" in caplog.text


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
@pytest.mark.parametrize("n_words", [10, 2000, 30_000])
def test_cutting_first_gives_the_same_tokens_and_spans(tok, mode, n_words):
    prompt = "Tell me. " + " ".join(f"w{i}" for i in range(n_words))
    response = "Answer: " + " ".join(f"r{i}é" for i in range(n_words))
    got = encode(tok, prompt, response, max_length=48, truncation_mode=mode)
    whole = encode(tok, prompt, response)  # no max_length: every token, then truncated here by hand
    keep = slice(len(whole) - 48, None) if mode == "keep_end" else slice(0, 48)
    if len(whole) <= 48:
        keep = slice(None)
    assert got.input_ids == whole.input_ids[keep] and got.char_spans == whole.char_spans[keep]
    assert got.tokens == whole.tokens[keep]
    exact = len(whole) - len(got)  # a lower bound when the text was cut before tokenising (said "more than")
    if got.chars_untokenised:  # the text's far end was never tokenised: the cut count covers what was
        assert n_words == 30_000 and got.truncated > 0
    else:
        assert got.truncated == exact
    start = whole.response_start - (keep.start or 0)
    assert got.response_start == min(max(start, 0), len(got))
