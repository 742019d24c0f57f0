"""A shard folder records a fingerprint of the weights it was computed with: overwrite a local model folder with
other weights and rerun with --resume, and the old shards are refused rather than merged as if current."""

from __future__ import annotations

import json

import pytest

from tiviz.attribution.cache import weights_fingerprint
from tiviz.attribution.shards import MANIFEST, attribute_to_dir, shard_path
from tiviz.cli import main
from tiviz.data import load_pairs, save_pairs
from tiviz.errors import TableError
from tiviz.models import save_model
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    save_pairs(load_pairs(tiny_pairs())[:4], path)
    return path


def test_rewritten_model_folder_is_refused_on_resume(tmp_path, pairs_file, capsys):
    folder = tmp_path / "model"
    save_model(tiny_model(seed=0), folder, tokenizer=tiny_tokenizer())
    shards, out = tmp_path / "shards", tmp_path / "out.parquet"
    args = ["attribute", "--model", str(folder), "--pairs", str(pairs_file), "--methods", "gradient",
            "--shard-dir", str(shards), "--shard-size", "2", "--out", str(out), "--no-cache"]
    assert main(args) == 0
    shard_path(shards, 1).unlink()  # as if the run had been killed before its last shard
    out.unlink()
    save_model(tiny_model(seed=1), folder, tokenizer=tiny_tokenizer())  # other weights, same folder and id
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "model_weights" in err and "different run" in err
    assert not out.exists() and not shard_path(shards, 1).exists()  # nothing merged, nothing mixed
    manifest = json.loads((shards / MANIFEST).read_text())
    assert manifest["model_weights"] == weights_fingerprint(tiny_model(seed=0))


def test_reference_weights_are_part_of_the_identity(tmp_path, tok):
    pairs = load_pairs(tiny_pairs())[:2]
    policy = tiny_model(seed=0)
    attribute_to_dir(policy, pairs, ["implicit_reward"], tmp_path, tokenizer=tok, ref_model=tiny_model(seed=1),
                     shard_size=1)
    with pytest.raises(TableError, match="reference_weights"):
        attribute_to_dir(policy, pairs, ["implicit_reward"], tmp_path, tokenizer=tok, ref_model=tiny_model(seed=2),
                         shard_size=1)
    run = attribute_to_dir(policy, pairs, ["implicit_reward"], tmp_path, tokenizer=tok, ref_model=tiny_model(seed=1),
                           shard_size=1)
    assert run.skipped == [0, 1]  # the same weights: every finished shard reused
