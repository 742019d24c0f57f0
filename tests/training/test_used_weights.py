"""`training_weights`: the token weights a run used for a pair, recomputed from the run folder, equal the weights the
trainer itself computed at its first step (captured from the training loop), and at the end those the trainer's
weighting gives on the final policy; finite, non-negative, mean 1 over each response."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tiviz.data import load_pairs
from tiviz.errors import TivizError
from tiviz.models import load_model
from tiviz.testing import tiny_pairs
from tiviz.training.trainer import TIDPOTrainer
from tiviz.training.used_weights import METHOD, training_weights, weight_source

from .conftest import fast_config


def train_capturing(run, model_dir, weighting, **overrides):
    """A 2-step run of the tiny model (saved in `model_dir`, so training_weights can reload the base); returns the
    trainer and, per 1-based step, (the step's encoded pairs, the weights it trained with (2B, L))."""
    cfg = fast_config("no-triplet", weighting=weighting, max_steps=2, save_steps=0, bf16=False, **overrides)
    captured: dict[int, tuple[list, torch.Tensor]] = {}
    holder: dict[str, TIDPOTrainer] = {}

    def progress(ev):
        if ev.state == "running" and ev.metrics is not None:  # after each optimizer step
            tr = holder["trainer"]
            pairs = [tr.train_encoded[i] for i in tr.order.shard(ev.step - 1, 0, 1, 1)[0]]
            captured[ev.step] = (pairs, tr.last_weights["weights"].clone())

    tr = TIDPOTrainer(load_model(str(model_dir), dtype="float32"), load_pairs(tiny_pairs()), cfg, run,
                      progress=progress, weights_cache=run.parent / "cache")
    holder["trainer"] = tr
    assert tr.train().state == "finished"
    return tr, captured


def per_row(table, pairs, weights):
    """(trainer's row, training_weights' row) per (pair, side) of a captured batch, response tokens only."""
    B = len(pairs)
    out = []
    for r in range(2 * B):
        pair, side = pairs[r % B], ("chosen", "rejected")[r // B]
        seq = pair.chosen if side == "chosen" else pair.rejected
        rows = table[(table.pair_id == pair.pair_id) & (table.side == side)].sort_values("position")
        assert len(rows) == len(seq)
        resp = rows["in_response"].to_numpy()
        out.append((weights[r, : len(seq)].numpy()[resp], rows["score"].to_numpy()[resp]))
    return out


def check_table(table):
    resp = table[table.in_response]
    assert set(table["method"]) == {METHOD}
    assert np.isfinite(table["score"]).all() and (table["score"] >= 0).all()
    assert (table.loc[~table.in_response, "score"] == 0).all()
    np.testing.assert_allclose(resp.groupby(["pair_id", "side"])["score"].mean(), 1.0, rtol=1e-5)  # Eq. 7


@pytest.mark.parametrize("weighting", ["tidpo", "gradient", "attention", "implicit_reward", "uniform", "random"])
def test_start_and_end_equal_what_the_trainer_computed(tmp_path, tiny_model_dir, weighting):
    overrides = {"weighting_target": "logprob"} if weighting == "gradient" else {}
    tr, captured = train_capturing(tmp_path / "run", tiny_model_dir, weighting, **overrides)
    pairs = load_pairs(tiny_pairs())
    start = training_weights(tmp_path / "run", pairs, when="start")
    check_table(start)
    assert start.attrs["tiviz"]["training_weights"]["weighting"] == weighting
    step1_pairs, step1 = captured[1]
    for got, want in per_row(start, step1_pairs, step1):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if weighting not in ("uniform", "implicit_reward"):  # implicit_reward: policy == reference at the start
        assert start.loc[start.in_response, "score"].std() > 0.01

    end = training_weights(tmp_path / "run", pairs, when="end")
    check_table(end)
    if weighting == "random":  # the trainer's seeds at its last step
        last_pairs, want = captured[2]
    else:  # the trainer's weighting on its final policy, one step past the last
        last_pairs = tr.train_encoded
        tr.micro_step(last_pairs, tr.total_steps)
        want = tr.last_weights["weights"]
    for got, w in per_row(end, last_pairs, want):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)
    moved = not np.allclose(start["score"], end["score"], atol=1e-6)
    assert moved == (weighting not in ("uniform",)), "online and random weights change, uniform ones do not"


def test_fixed_weights_are_read_from_the_stored_table(tmp_path, tiny_model_dir):
    _, captured = train_capturing(tmp_path / "run", tiny_model_dir, "grad_x_input", weights_from=str(tiny_model_dir),
                                  lam=1.0)
    assert (tmp_path / "run" / "token_weights.parquet").is_file()
    pairs = load_pairs(tiny_pairs())
    source = weight_source(tmp_path / "run")
    assert source.fixed and not source.follows_policy and "token_weights.parquet" in source.label()
    start = training_weights(tmp_path / "run", pairs, when="start", pair_ids=["math", "capital"])
    check_table(start)
    assert sorted(set(start["pair_id"])) == ["capital", "math"]
    for step in (1, 2):
        step_pairs, w = captured[step]
        keep = [i for i, p in enumerate(step_pairs) if p.pair_id in ("math", "capital")]
        B = len(step_pairs)
        rows = w[[*keep, *(B + i for i in keep)]]
        for got, want in per_row(start, [step_pairs[i] for i in keep], rows):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)  # read, not recomputed
    end = training_weights(tmp_path / "run", pairs, when="end", pair_ids=["math", "capital"])
    np.testing.assert_array_equal(end["score"].to_numpy(), start["score"].to_numpy())


def test_runs_without_tiviz_settings_or_final_model_are_refused(tmp_path, tiny_model_dir):
    pairs = load_pairs(tiny_pairs())
    (tmp_path / "trl").mkdir()
    (tmp_path / "trl" / "config.json").write_text(json.dumps({"model": str(tiny_model_dir)}))
    with pytest.raises(TivizError, match="not a tiviz training run"):
        training_weights(tmp_path / "trl", pairs)
    run = tmp_path / "unfinished"
    run.mkdir()
    cfg = fast_config("no-triplet", max_steps=2)
    (run / "config.json").write_text(json.dumps({"tidpo": cfg.to_dict(), "model": str(tiny_model_dir),
                                                 "total_steps": 2}))
    assert training_weights(run, pairs, pair_ids=["math"]).pair_id.unique().tolist() == ["math"]
    with pytest.raises(TivizError, match="has not finished"):
        training_weights(run, pairs, when="end")
    with pytest.raises(TivizError, match="pair_ids"):
        training_weights(run, pairs, pair_ids=["nope"])
