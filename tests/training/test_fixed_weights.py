"""`weights_from`: token weights computed once from a fixed scorer (a finished run against its base, or a causal
LM), stored with the run and read at every step; the attribution cache makes a second run compute nothing."""

from __future__ import annotations

import json

import pytest
import torch

from tiviz.data import load_pairs
from tiviz.models import LoadedModel, load_model
from tiviz.table import read_table
from tiviz.testing import tiny_pairs, tiny_tokenizer
from tiviz.training.data import pair_rows
from tiviz.training.fixed_weights import FixedWeights
from tiviz.training.trainer import TIDPOTrainer

from .conftest import fast_config, loaded_tiny


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A 2-step DPO run of the tiny model saved in a folder (so the run's base model can be reloaded)."""
    run = tmp_path_factory.mktemp("scorer-run") / "run"
    loaded = LoadedModel(load_model(str(tiny_model_dir), dtype="float32").model, tiny_tokenizer(),
                         str(tiny_model_dir))
    TIDPOTrainer(loaded, load_pairs(tiny_pairs()), fast_config("dpo", max_steps=2, save_steps=0), run).train()
    return run


def fixed_trainer(tmp_path, name, source, weighting, cache, **overrides):
    cfg = fast_config("no-triplet", weighting=weighting, weights_from=str(source), lam=1.0, **overrides)
    return TIDPOTrainer(loaded_tiny(), load_pairs(tiny_pairs()), cfg, tmp_path / name, weights_cache=cache)


def step0(tr):
    pairs = [tr.train_encoded[i] for i in tr.order.shard(0, 0, 1, 1)[0]]
    return pairs, pair_rows(pairs, tr.pad_id)


def check_weights(w, batch):
    resp = batch.response_mask
    assert torch.isfinite(w).all() and (w >= 0).all() and (w[~resp] == 0).all()
    means = (w * resp).sum(-1) / resp.sum(-1)
    torch.testing.assert_close(means, torch.ones_like(means))
    assert w[resp].std() > 0.01


@pytest.mark.parametrize("weighting", ["gradient", "grad_x_input", "implicit_reward", "attention", "tidpo"])
def test_weights_from_a_finished_run_are_computed_once_and_cached(tmp_path, finished_run, weighting):
    cache = tmp_path / "cache"
    first = fixed_trainer(tmp_path, "a", finished_run, weighting, cache)
    assert isinstance(first.weights, FixedWeights)
    assert first.weights.provenance()["cache"]["computed"] == len(first.train_encoded)
    pairs, batch = step0(first)
    first.micro_step(pairs, 0)
    w = first.last_weights["weights"]
    check_weights(w, batch)

    second = fixed_trainer(tmp_path, "b", finished_run, weighting, cache)  # same scorer: nothing to compute
    assert second.weights.provenance()["cache"] == {"folder": str(cache), "reused": len(pairs_of(second)),
                                                    "computed": 0}
    second.micro_step(pairs, 0)
    torch.testing.assert_close(second.last_weights["weights"], w, rtol=0, atol=0)
    first.step(0)  # the policy moves; fixed weights do not
    first.micro_step(pairs, 1)
    torch.testing.assert_close(first.last_weights["weights"], w, rtol=0, atol=0)


def pairs_of(tr):
    return tr.train_encoded


def test_fixed_weights_equal_the_online_weights_of_the_same_policy(tmp_path, finished_run):
    """Weights from run R's final model (gradient, max_logit) equal the online weights of a trainer whose policy
    is that final model: the same method, computed once instead of at each step. (Long enough limits that
    training cuts no prompt: the scorer sees each pair uncut.)"""
    long = {"max_length": 256, "max_prompt_length": 200}
    fixed = fixed_trainer(tmp_path, "fixed", finished_run, "gradient", tmp_path / "cache", **long)
    assert not any(p.chosen.truncated or p.rejected.truncated for p in fixed.train_encoded)
    final = load_model(str(finished_run / "final"), dtype="float32")
    online = TIDPOTrainer(LoadedModel(final.model, tiny_tokenizer(), "final"), load_pairs(tiny_pairs()),
                          fast_config("no-triplet", weighting="gradient", lam=1.0, **long), tmp_path / "online")
    pairs, _ = step0(fixed)
    fixed.micro_step(pairs, 0)
    online.micro_step(pairs, 0)
    torch.testing.assert_close(fixed.last_weights["weights"], online.last_weights["weights"], rtol=1e-4, atol=1e-5)


def test_weights_from_a_causal_lm_folder_are_stored_with_the_run(tmp_path, tiny_model_dir):
    tr = fixed_trainer(tmp_path, "run", tiny_model_dir, "grad_x_input", tmp_path / "cache", max_steps=2,
                       save_steps=0)
    tr.train()
    stored = read_table(tmp_path / "run" / "token_weights.parquet")
    assert set(stored["method"]) == {"grad_x_input"} and stored["pair_id"].nunique() == len(tiny_pairs())
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    source = cfg["token_weights"]["weights_from"]
    assert source["kind"] == "causal_lm" and source["source"] == str(tiny_model_dir)
    assert source["scorer"]["kind"] == "likelihood"
    pairs, batch = step0(tr)
    tr.micro_step(pairs, 0)
    check_weights(tr.last_weights["weights"], batch)


def test_a_reward_model_is_refused_with_a_clear_error(tmp_path):
    from tiviz.errors import ConfigError
    from tiviz.testing import save_tiny_reward_model

    folder = tmp_path / "rm"
    save_tiny_reward_model(folder)
    with pytest.raises(ConfigError, match="reward model"):
        fixed_trainer(tmp_path, "run", folder, "gradient", tmp_path / "cache")


def test_cli_trains_with_weights_from_a_run(tmp_path, finished_run, tiny_model_dir, tiny_pairs_file, monkeypatch,
                                            capsys):
    from tiviz.cli import main

    from .conftest import fast_flags

    monkeypatch.setenv("TIVIZ_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["train", "--pairs", str(tiny_pairs_file), "--model", str(tiny_model_dir), "--out",
                 str(tmp_path / "run"), "--preset", "dpo", "--weighting", "grad_x_input", "--weighting-target",
                 "logprob", "--weights-from", str(finished_run), *fast_flags(max_steps=1)])
    assert code == 0 and "finished 1 steps" in capsys.readouterr().out
    rec = json.loads((tmp_path / "run" / "config.json").read_text())
    assert rec["tidpo"]["weights_from"] == str(finished_run)
    assert rec["token_weights"]["weights_from"]["kind"] == "run"
    assert rec["token_weights"]["cache"]["folder"].startswith(str(tmp_path / "cache"))
