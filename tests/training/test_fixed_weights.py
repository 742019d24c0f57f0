"""`weights_from`: token weights computed once from a fixed scorer (a finished run against its base, a causal LM,
or a reward model), stored with the run and read at every step; the attribution cache makes a second run compute
nothing."""

from __future__ import annotations

import json

import numpy as np
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


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    from tiviz.testing import save_tiny_reward_model

    return save_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", seed=1)


@pytest.mark.parametrize(("weighting", "target"), [("gradient", "reward"), ("grad_x_input", "margin"),
                                                   ("token_score", "max_logit"), ("attention", "max_logit")])
def test_weights_from_a_reward_model_train_and_are_cached(tmp_path, reward_model_dir, weighting, target):
    """A reward-model folder as the fixed source: its score is the target (token_score its decomposition); a
    2-step run reads finite, non-negative weights of mean 1 on the response; a second run computes nothing."""
    cache = tmp_path / "cache"
    first = fixed_trainer(tmp_path, "a", reward_model_dir, weighting, cache, weighting_target=target, max_steps=2,
                          save_steps=0)
    assert first.weights.provenance()["weights_from"]["kind"] == "reward_model"
    assert first.weights.provenance()["cache"]["computed"] == len(first.train_encoded)
    table = first.weights.table
    assert table.attrs["tiviz"]["scorer"]["kind"] == "reward_model" and set(table["method"]) == {weighting}
    pairs, batch = step0(first)
    first.micro_step(pairs, 0)
    w = first.last_weights["weights"]
    check_weights(w, batch)
    first.train()
    assert json.loads((tmp_path / "a" / "status.json").read_text())["step"] == 2

    second = fixed_trainer(tmp_path, "b", reward_model_dir, weighting, cache, weighting_target=target)
    assert second.weights.provenance()["cache"] == {"folder": str(cache), "reused": len(second.train_encoded),
                                                    "computed": 0}
    second.micro_step(pairs, 0)
    torch.testing.assert_close(second.last_weights["weights"], w, rtol=0, atol=0)


@pytest.mark.parametrize(("weighting", "target", "field", "says"), [
    ("tidpo", "max_logit", "weighting", "gradient, grad_x_input, integrated_gradients, attention, token_score, "
     "token_score_pair, occlusion with a reward model"),
    ("implicit_reward", "max_logit", "weighting", "tidpo reads a causal LM's final logits"),
    ("gradient", "max_logit", "weighting_target", "reward, margin with a reward model"),
    ("integrated_gradients", "logprob", "weighting_target", "its score is target 'reward'"),
])
def test_a_reward_model_refuses_what_it_cannot_give(tmp_path, reward_model_dir, weighting, target, field, says):
    from tiviz.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        fixed_trainer(tmp_path, "run", reward_model_dir, weighting, tmp_path / "cache", weighting_target=target)
    assert err.value.field == field and says in str(err.value)
    assert not (tmp_path / "cache").exists()  # refused before anything was computed


def test_a_reward_models_scores_reach_the_policys_tokens_by_character_overlap(reward_model_dir):
    """The reward model reads TRL's encoding (the whole conversation, closed by the end-of-turn `<|im_end|>\\n`),
    the policy its own (the prompt, then the response and EOS): the ids differ, so map_scores goes by character
    overlap. The response's text is the same byte-level tokens in both: each gets its reward-model token's score
    (split characters' empty continuations included, in order), the policy's EOS the end-of-turn's, and nothing
    is lost or counted twice."""
    from tiviz.attribution.core import attribute
    from tiviz.scoring import load_scorer
    from tiviz.tokenization import encode_pair
    from tiviz.training.fixed_weights import map_scores

    pairs = load_pairs(tiny_pairs())
    df = attribute(load_scorer(str(reward_model_dir), device="cpu"), pairs, ["token_score"])
    for pair in pairs:
        for side, seq in zip(("chosen", "rejected"), encode_pair(tiny_tokenizer(), pair), strict=True):
            rows = df[(df["pair_id"] == pair.id) & (df["side"] == side)].sort_values("position")
            assert rows["token_id"].tolist() != seq.input_ids  # the two encodings differ
            got = map_scores(seq, rows)
            resp = rows[rows["in_response"]]
            assert resp["token"].tolist() == [*seq.tokens[seq.response_start : -1], "<|im_end|>", "Ċ"]
            rm = resp["score"].to_numpy()
            np.testing.assert_allclose(got[seq.response_start : -1], rm[:-2])
            assert seq.tokens[-1] == "<|im_end|>" and got[-1] == pytest.approx(rm[-2:].sum())
            assert (got[: seq.response_start] == 0).all()  # token_score: nothing on the prompt


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


def test_cli_trains_with_weights_from_a_reward_model(tmp_path, reward_model_dir, tiny_model_dir, tiny_pairs_file,
                                                     monkeypatch, capsys):
    from tiviz.cli import main

    from .conftest import fast_flags

    monkeypatch.setenv("TIVIZ_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["train", "--pairs", str(tiny_pairs_file), "--model", str(tiny_model_dir), "--out",
                 str(tmp_path / "run"), "--preset", "dpo", "--weighting", "integrated_gradients",
                 "--weighting-target", "reward", "--weights-from", str(reward_model_dir), *fast_flags(max_steps=1)])
    assert code == 0 and "finished 1 steps" in capsys.readouterr().out
    rec = json.loads((tmp_path / "run" / "config.json").read_text())
    assert rec["token_weights"]["weights_from"]["kind"] == "reward_model"
    assert rec["token_weights"]["target"] == "reward"
    stored = read_table(tmp_path / "run" / "token_weights.parquet")
    assert stored.attrs["tiviz"]["scorer"]["kind"] == "reward_model"
    assert stored.groupby(["pair_id", "side"])["convergence_delta"].first().notna().all()
