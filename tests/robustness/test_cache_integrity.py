"""The attribution cache trusts nothing it finds: an entry whose rows are not what its key says (other scores,
other pair, no rows, other tokens, a flipped bit) is recomputed with a warning; the cache stays under its size
limit by evicting the least recently used entries; temporary files of dead writers are removed."""

from __future__ import annotations

import logging
import os
import shutil
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tiviz.attribution import attribute, core
from tiviz.attribution import cache as attribution_cache
from tiviz.attribution.cache import AttributionCache
from tiviz.config import AttributionConfig
from tiviz.tokenization import encode_pair


@pytest.fixture()
def calls(monkeypatch):
    """The methods each `_score_batch` call computed, in order."""
    seen: list[list[str]] = []
    real = core._score_batch

    def counting(model, tokenizer, batch, names, cfg, ref_model):
        seen.append(list(names))
        return real(model, tokenizer, batch, names, cfg, ref_model)

    monkeypatch.setattr(core, "_score_batch", counting)
    return seen


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=False,
                                  rtol=1e-5, atol=1e-7)


def entries(folder) -> list:
    return sorted(folder.rglob("*.parquet"))


def test_scores_rewritten_x1000_are_recomputed(tok, pairs, model, tmp_path, calls, caplog):
    plain = attribute(model, pairs[:1], ["gradient"], tokenizer=tok)
    attribute(model, pairs[:1], ["gradient"], tokenizer=tok, cache=tmp_path)
    (entry,) = entries(tmp_path)
    # rewritten as pandas would (no checksum) and as pyarrow would (checksum kept, scores changed)
    for keep_metadata in (False, True):
        table = pq.read_table(entry)
        df = table.to_pandas()
        df["score"] = df["score"] * 1000
        if keep_metadata:
            out = pa.Table.from_pandas(df, preserve_index=False)
            pq.write_table(out.replace_schema_metadata(table.schema.metadata), entry)
        else:
            df.to_parquet(entry, index=False)
        calls.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tiviz.attribution.cache"):
            got = attribute(model, pairs[:1], ["gradient"], tokenizer=tok, cache=tmp_path)
        assert calls == [["gradient"]], keep_metadata
        assert "recomputing" in caplog.text and entry.name in caplog.text
        same_rows(got, plain)


def test_single_bit_flips_never_read_back_different_values(tok, pairs, model, tmp_path):
    cfg = AttributionConfig()
    attribute(model, pairs[:1], ["attention"], tokenizer=tok, cache=tmp_path)
    store = AttributionCache(tmp_path, model, None, cfg)
    sides = encode_pair(tok, pairs[0], max_length=cfg.max_length, truncation_mode=cfg.truncation_mode)
    key = store.key(pairs[0], sides, "attention")
    (entry,) = entries(tmp_path)
    good = entry.read_bytes()
    want = store.get(key)
    assert want is not None and len(want) == sum(len(s) for s in sides)
    outcomes = {"same": 0, "refused": 0}
    n_bits = len(good) * 8
    for bit in range(0, n_bits, max(1, n_bits // 400)):  # about 400 flips spread over the whole file
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        entry.write_bytes(bytes(data))
        got = store.get(key)
        if got is None:
            outcomes["refused"] += 1
        else:
            pd.testing.assert_frame_equal(got, want, check_exact=True)  # never different values, silently
            outcomes["same"] += 1
    assert outcomes["refused"] > 100, outcomes  # the checks did refuse damaged entries


def test_a_zero_row_entry_is_recomputed(tok, pairs, model, tmp_path, calls, caplog):
    plain = attribute(model, pairs[:2], ["gradient"], tokenizer=tok)
    attribute(model, pairs[:2], ["gradient"], tokenizer=tok, cache=tmp_path)
    entry = entries(tmp_path)[0]
    pd.read_parquet(entry).iloc[:0].to_parquet(entry, index=False)
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="tiviz.attribution.cache"):
        got = attribute(model, pairs[:2], ["gradient"], tokenizer=tok, cache=tmp_path)
    assert calls == [["gradient"]] and "recomputing" in caplog.text
    assert set(got.pair_id) == {p.id for p in pairs[:2]}
    same_rows(got, plain)


def test_an_entry_copied_from_another_pair_is_recomputed(tok, pairs, model, tmp_path, calls, caplog):
    plain = attribute(model, pairs[:2], ["tidpo"], tokenizer=tok)
    attribute(model, pairs[:2], ["tidpo"], tokenizer=tok, cache=tmp_path)
    a, b = entries(tmp_path)
    shutil.copyfile(a, b)  # b now holds a's rows, under b's key
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="tiviz.attribution.cache"):
        got = attribute(model, pairs[:2], ["tidpo"], tokenizer=tok, cache=tmp_path)
    assert calls == [["tidpo"]] and "recomputing" in caplog.text and b.name in caplog.text
    same_rows(got, plain)
    calls.clear()
    attribute(model, pairs[:2], ["tidpo"], tokenizer=tok, cache=tmp_path)
    assert calls == []  # the recomputed entry was written back and is trusted now


def test_the_cache_evicts_least_recently_used_entries_past_its_limit(tok, pairs, model, tmp_path, monkeypatch,
                                                                       calls):
    attribute(model, pairs[:1], ["gradient"], tokenizer=tok, cache=tmp_path)
    (first,) = entries(tmp_path)
    size = first.stat().st_size
    monkeypatch.setenv(attribution_cache.LIMIT_ENV, str(3.5 * size / 2**20))  # room for about three entries
    for i in range(1, 5):
        attribute(model, pairs[i : i + 1], ["gradient"], tokenizer=tok, cache=tmp_path)
        old = time.time() - 100 + i
        for e in entries(tmp_path):
            if e.stat().st_mtime > old:
                os.utime(e, (old, old))  # distinct, increasing use times without sleeping
        if i == 2:
            calls.clear()
            attribute(model, pairs[:1], ["gradient"], tokenizer=tok, cache=tmp_path)  # a hit: first is fresh
            assert calls == []
            os.utime(first, (old + 0.5, old + 0.5))
    kept = entries(tmp_path)
    assert sum(e.stat().st_size for e in kept) <= 3.5 * size
    assert first in kept  # used recently, so kept
    calls.clear()
    attribute(model, pairs[1:2], ["gradient"], tokenizer=tok, cache=tmp_path)  # the oldest: evicted
    assert calls == [["gradient"]]


def test_temporary_files_of_dead_writers_are_removed(tok, pairs, model, tmp_path):
    attribute(model, pairs[:1], ["gradient"], tokenizer=tok, cache=tmp_path)
    (entry,) = entries(tmp_path)
    dead = entry.with_name(f".{entry.name}.999999999.tmp")
    old = entry.with_name(f".{entry.name}.{os.getppid()}.tmp")
    live = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    for f in (dead, old, live):
        f.write_bytes(b"half an entry")
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # a live pid, but hours old
    AttributionCache(tmp_path, model, None, AttributionConfig())
    assert not dead.exists() and not old.exists() and live.exists()


def test_cli_flag_sets_the_limit(monkeypatch, tmp_path):
    from tiviz.cli import build_parser
    from tiviz.commands import cache_arg

    LIMIT_ENV = attribution_cache.LIMIT_ENV
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    args = build_parser().parse_args(["attribute", "--pairs", "x.jsonl", "--cache-max-mb", "12.5"])
    cache_arg(args)
    assert os.environ[LIMIT_ENV] == "12.5"
    from tiviz.attribution.cache import limit_bytes

    assert limit_bytes() == int(12.5 * 2**20)
    monkeypatch.setenv(LIMIT_ENV, "lots")
    from tiviz.errors import ConfigError

    with pytest.raises(ConfigError, match=LIMIT_ENV):
        limit_bytes()
