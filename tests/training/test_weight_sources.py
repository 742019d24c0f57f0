"""Token-weight sources (docs/TRAINING.md, token-weight sources): every attribution method, uniform and random, online;
weights finite, non-negative, mean 1 on the span, unchanged when recomputed from the same policy."""

from __future__ import annotations

import pytest
import torch

from tiviz.attribution.core import method_scores
from tiviz.data import load_pairs
from tiviz.testing import tiny_pairs
from tiviz.training.config import weighting_choices
from tiviz.training.data import pair_rows
from tiviz.training.trainer import TIDPOTrainer
from tiviz.training.weighting import OnlineWeights, attribution_config

from .conftest import fast_config, loaded_tiny

ONLINE = list(weighting_choices())


def make(tmp_path, weighting, **overrides):
    cfg = fast_config("no-triplet", weighting=weighting, **overrides)
    return TIDPOTrainer(loaded_tiny(), load_pairs(tiny_pairs()), cfg, tmp_path / weighting)


def step0(tr):
    pairs = [tr.train_encoded[i] for i in tr.order.shard(0, 0, 1, 1)[0]]
    return pairs, pair_rows(pairs, tr.pad_id)


def check_weights(w, batch):
    resp = batch.response_mask
    assert torch.isfinite(w).all()
    assert (w >= 0).all() and (w[~resp] == 0).all()
    means = (w * resp).sum(-1) / resp.sum(-1)  # span = response
    torch.testing.assert_close(means, torch.ones_like(means))


@pytest.mark.parametrize("weighting", ONLINE)
def test_online_weights_are_finite_non_negative_mean_one_and_reproducible(tmp_path, weighting):
    tr = make(tmp_path, weighting, lam=1.0)
    pairs, batch = step0(tr)
    tr.micro_step(pairs, 0)
    first = tr.last_weights["weights"]
    check_weights(first, batch)
    tr.micro_step(pairs, 0)  # the same policy (no optimizer step in between)
    torch.testing.assert_close(tr.last_weights["weights"], first, rtol=1e-5, atol=1e-6)
    if weighting not in ("uniform", "implicit_reward"):  # implicit_reward: 0 while policy == reference
        assert first[batch.response_mask].std() > 0.01  # an importance, not uniform weights


@pytest.mark.parametrize("weighting", ["tidpo", "gradient", "grad_x_input"])
@pytest.mark.parametrize("target", ["max_logit", "logprob"])
def test_weights_from_the_training_forward_equal_the_attribution_methods_on_the_policy(tmp_path, weighting,
                                                                                        target):
    tr = make(tmp_path, weighting, weighting_target=target, lam=1.0)
    assert tr.weights.uses_forward  # no dropout: the training forward is reused
    pairs, batch = step0(tr)
    tr.micro_step(pairs, 0)
    separate = OnlineWeights(tr.config, tr.tokenizer, fused=False).before_forward(tr.policy, batch, pairs, 0, tr.ref)
    assert separate is not None
    torch.testing.assert_close(tr.last_weights["weights"], separate, rtol=1e-4, atol=1e-5)


def test_signed_importance_becomes_non_negative_by_absolute_value_or_positive_part(tmp_path):
    got = {}
    for sign in ("abs", "positive"):
        tr = make(tmp_path / sign, "grad_x_input", weighting_target="logprob", weighting_sign=sign, lam=1.0)
        pairs, batch = step0(tr)
        tr.micro_step(pairs, 0)
        got[sign] = tr.last_weights["weights"]
    B = batch.input_ids.shape[0] // 2
    order = torch.stack([torch.arange(B), torch.arange(B) + B], 1).reshape(-1)  # chosen, rejected alternating
    raw = method_scores(tr.policy.eval(), tr.tokenizer, _take(batch, order), ["grad_x_input"],
                        attribution_config(tr.config))["grad_x_input"][torch.argsort(order)]
    resp = batch.response_mask
    assert (raw[resp] < 0).any() and (raw[resp] > 0).any()
    assert (got["positive"][resp & (raw < 0)] == 0).all() and (got["positive"][resp & (raw > 0)] > 0).all()
    assert (got["abs"][resp & (raw != 0)] > 0).all()
    # abs: proportional to |score| on each row (lam 1, mean 1)
    expect = raw.abs() * resp / (raw.abs() * resp).sum(-1, keepdim=True) * resp.sum(-1, keepdim=True)
    torch.testing.assert_close(got["abs"], expect, rtol=1e-4, atol=1e-5)


def _take(batch, order):
    from tiviz.tokenization import Batch

    return Batch(batch.input_ids[order], batch.attention_mask[order], batch.position_ids[order],
                 batch.response_mask[order], [batch.offsets[int(i)] for i in order])
