"""Sharded attribution: the merged shards equal one run, finished shards are never recomputed, partial and
damaged files are ignored, and a folder of another run (settings, model, methods, data) is refused."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

import tiviz.attribution.core as core
from tiviz.attribution import attribute
from tiviz.attribution.shards import (
    MANIFEST,
    attribute_to_dir,
    finished_shards,
    merge_shards,
    pairs_hash,
    shard_path,
)
from tiviz.cli import main
from tiviz.config import AttributionConfig
from tiviz.data import load_pairs, save_pairs
from tiviz.errors import ConfigError, TableError
from tiviz.models import save_model
from tiviz.table import PROVENANCE_KEY
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer

METHODS = ["gradient", "tidpo"]
SETTINGS = {"batch_size": 2}  # shards of 2 pairs = the batches of one plain run, so results match exactly


@pytest.fixture()
def six_pairs():
    return load_pairs([{**p, "id": f"{p['id']}-{k}"} for k in range(2) for p in tiny_pairs()][:6])


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)


def run(tiny, tok, pairs, out, **kw):
    return attribute_to_dir(tiny, pairs, kw.pop("methods", METHODS), out, tokenizer=tok,
                            shard_size=kw.pop("shard_size", 2), **{**SETTINGS, **kw})


def mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.parquet"))}


def count_calls(monkeypatch):
    calls = []
    real = core.attribute
    monkeypatch.setattr(core, "attribute", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    return calls


def same_as_one_run(merged: pd.DataFrame, direct: pd.DataFrame) -> None:
    """Same rows in the same order; scores equal up to float noise: one run batches pairs of similar length from
    the whole dataset, a shard only from its own pairs, so paddings (and the kernels' summation order) differ."""
    pd.testing.assert_frame_equal(merged, direct, check_exact=False, rtol=1e-5, atol=1e-6)


def test_merged_shards_equal_one_run(tiny, tok, six_pairs, tmp_path):
    done = run(tiny, tok, six_pairs, tmp_path / "s")
    assert (done.n_shards, done.computed, done.skipped) == (3, [0, 1, 2], [])
    merged = merge_shards(tmp_path / "s")
    direct = attribute(tiny, six_pairs, METHODS, tokenizer=tok, **SETTINGS)
    same_as_one_run(merged, direct)
    prov = merged.attrs[PROVENANCE_KEY]
    assert prov["methods"] == METHODS and prov["settings"]["batch_size"] == 2
    assert prov["shards"]["count"] == 3 and prov["shards"]["pairs_sha256"][0] == pairs_hash(six_pairs[:2])


def test_rerun_skips_finished_shards(tiny, tok, six_pairs, tmp_path, monkeypatch):
    out = tmp_path / "s"
    run(tiny, tok, six_pairs, out)
    before = mtimes(out)
    calls = count_calls(monkeypatch)
    again = run(tiny, tok, six_pairs, out)
    assert (again.computed, again.skipped, calls) == ([], [0, 1, 2], [])
    assert mtimes(out) == before


def test_partial_temp_file_is_ignored_and_removed(tiny, tok, six_pairs, tmp_path, monkeypatch):
    out = tmp_path / "s"
    run(tiny, tok, six_pairs, out)
    expected = merge_shards(out)
    shard_path(out, 1).unlink()
    partial = out / "shard-00001.parquet.tmp-4242"
    partial.write_bytes(b"PAR1 half a shard")
    before = mtimes(out)
    calls = count_calls(monkeypatch)
    again = run(tiny, tok, six_pairs, out)
    assert (again.computed, again.skipped, calls) == ([1], [0, 2], [2])
    assert not partial.exists()
    assert {k: v for k, v in mtimes(out).items() if k != "shard-00001.parquet"} == \
        {k: v for k, v in before.items() if k != "shard-00001.parquet"}
    pd.testing.assert_frame_equal(merge_shards(out), expected, check_exact=True)


def test_damaged_shard_is_computed_again(tiny, tok, six_pairs, tmp_path, caplog):
    out = tmp_path / "s"
    run(tiny, tok, six_pairs, out)
    shard_path(out, 0).write_bytes(shard_path(out, 0).read_bytes()[:100])  # a disk that lost the tail
    with caplog.at_level(logging.WARNING, logger="tiviz.attribution.shards"):
        again = run(tiny, tok, six_pairs, out)
    assert again.computed == [0] and "shard-00000.parquet: unreadable" in caplog.text
    assert finished_shards(out) == [0, 1, 2]


def test_shard_swapped_in_from_elsewhere_is_refused_by_merge(tiny, tok, six_pairs, tmp_path):
    out = tmp_path / "s"
    run(tiny, tok, six_pairs, out)
    shard_path(out, 1).write_bytes(shard_path(out, 0).read_bytes())
    assert finished_shards(out) == [0, 2]  # a rerun would compute shard 1 again
    with pytest.raises(TableError, match=r"shard-00001\.parquet: holds other pairs"):
        merge_shards(out)


@pytest.mark.parametrize(("change", "words"), [
    ({"n_steps": 7}, f"settings.n_steps: 7 now, {AttributionConfig().n_steps} in the folder"),
    ({"methods": ["gradient"]}, "methods: ['gradient'] now, ['gradient', 'tidpo'] in the folder"),
    ({"shard_size": 3}, "shard_size: 3 now, 2 in the folder"),
    ({"model_id": "another-model"}, "model_id: 'another-model' now, 'tiviz-tiny-test-model' in the folder"),
    ({"data": True}, "shard 1: the ids or texts of its pairs differ"),
])
def test_a_different_run_is_refused(tiny, tok, six_pairs, tmp_path, change, words):
    out = tmp_path / "s"
    run(tiny, tok, six_pairs, out)
    pairs = list(six_pairs)
    if change.pop("data", False):
        pairs[2] = load_pairs([{**pairs[2].to_record(), "chosen": "Edited after the first run.", "rationale_chosen": None}])[0]
    with pytest.raises(TableError) as info:
        run(tiny, tok, pairs, out, **change)
    assert "holds shards of a different run" in str(info.value) and words in str(info.value)
    assert "Fix: use a new shard folder" in str(info.value)


def test_merge_names_missing_shards(tiny, tok, six_pairs, tmp_path):
    out = tmp_path / "s"
    run(tiny, tok, six_pairs, out, rank=0, world_size=2)  # rank 1's shard never ran
    with pytest.raises(TableError, match=r"1 of 3 shard\(s\) not finished \(1\)\. Fix: rerun"):
        merge_shards(out)
    with pytest.raises(TableError, match=r"no manifest\.json"):
        merge_shards(tmp_path)


def test_ranks_split_the_shards_and_merge_to_one_run(tiny, tok, six_pairs, tmp_path):
    out = tmp_path / "s"
    r0 = run(tiny, tok, six_pairs, out, rank=0, world_size=2)
    r1 = run(tiny, tok, six_pairs, out, rank=1, world_size=2)
    assert (r0.computed, r1.computed) == ([0, 2], [1])
    direct = attribute(tiny, six_pairs, METHODS, tokenizer=tok, **SETTINGS)
    same_as_one_run(merge_shards(out), direct)


def test_manifest_records_the_run(tiny, tok, six_pairs, tmp_path):
    out = tmp_path / "s"
    run(tiny, tok, six_pairs, out, data_info={"file": "pairs.jsonl"})
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model_id"] == "tiviz-tiny-test-model" and manifest["n_pairs"] == 6
    assert [s["first_id"] for s in manifest["shards"]] == ["capital-0", "polite-0", "capital-1"]
    assert manifest["shards"][2]["sha256"] == pairs_hash(six_pairs[4:])
    assert manifest["data"] == {"file": "pairs.jsonl"}


@pytest.mark.parametrize(("kw", "field"), [({"shard_size": 0}, "shard_size"), ({"rank": 2, "world_size": 2}, "rank")])
def test_bad_shard_settings(tiny, tok, six_pairs, tmp_path, kw, field):
    with pytest.raises(ConfigError) as info:
        run(tiny, tok, six_pairs, tmp_path / "s", **kw)
    assert info.value.field == field


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    folder = save_model(tiny_model(seed=0), tmp / "model", tokenizer=tiny_tokenizer())
    pairs = tmp / "pairs.jsonl"
    save_pairs(load_pairs(tiny_pairs()), pairs)
    return folder, pairs


def test_cli_shard_dir_resume_and_refusals(cli_setup, tmp_path, capsys):
    folder, pairs = cli_setup
    base = ["attribute", "--pairs", str(pairs), "--model", str(folder), "--methods", "gradient",
            "--shard-dir", str(tmp_path / "s"), "--shard-size", "3", "--out", str(tmp_path / "out.parquet")]
    assert main(base) == 0
    assert "computed 2 shard(s), skipped 0" in capsys.readouterr().out
    first = pd.read_parquet(tmp_path / "out.parquet")
    assert main(base) == 2  # a second run into the same folder must say --resume
    assert "already holds 2 finished shard(s). Fix: pass --resume" in capsys.readouterr().err
    assert main([*base, "--resume"]) == 0
    assert "computed 0 shard(s), skipped 2" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), first)
    assert main([*base, "--resume", "--n-steps", "7"]) == 2
    assert f"settings.n_steps: 7 now, {AttributionConfig().n_steps} in the folder" in capsys.readouterr().err
    assert main(["attribute", "--pairs", str(pairs), "--resume"]) == 2
    assert "--resume only together with --shard-dir" in capsys.readouterr().err


def test_shard_dir_that_is_a_file(tiny, tok, six_pairs, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TableError, match="is a file, not a folder"):
        run(tiny, tok, six_pairs, tmp_path / "file")
