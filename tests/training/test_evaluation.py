"""Held-out evaluation: what `TIDPOTrainer.evaluate` returns, against margins computed pair by pair by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tiviz.data import load_pairs
from tiviz.testing import tiny_pairs
from tiviz.training.trainer import TIDPOTrainer

from .conftest import fast_config, loaded_tiny


def _logp(model, seq) -> float:
    """log pi(response | prompt) of one unpadded sequence: the sum over response tokens t of
    log softmax(logits[t - 1])[token t], one token at a time."""
    ids = torch.tensor([seq.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # (L, V)
    return sum(float(torch.log_softmax(logits[t - 1], -1)[seq.input_ids[t]])
               for t in range(max(seq.response_start, 1), len(seq.input_ids)))


def _hand_margins(policy, reference, encoded, beta):
    return [beta * ((_logp(policy, p.chosen) - _logp(reference, p.chosen))
                    - (_logp(policy, p.rejected) - _logp(reference, p.rejected))) for p in encoded]


def _check(metrics, margins):
    assert metrics["eval/n_pairs"] == len(margins)
    assert metrics["eval/margin"] == pytest.approx(sum(margins) / len(margins), rel=1e-4, abs=1e-6)
    assert metrics["eval/accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))


def test_evaluation_returns_the_mean_margin_and_the_share_of_positive_margins(tmp_path):
    pairs = load_pairs(tiny_pairs())
    tr = TIDPOTrainer(loaded_tiny(), pairs, fast_config("dpo", learning_rate=5e-2), tmp_path / "run",
                      eval_pairs=pairs)
    before = tr.evaluate()
    assert before == {"eval/accuracy": 0.0, "eval/margin": 0.0, "eval/n_pairs": float(len(pairs))}  # ties: wrong
    for step in range(3):
        tr.step(step)
    margins = _hand_margins(tr.policy.eval(), tr.reference, tr.eval_encoded, tr.config.beta)
    assert any(m > 0 for m in margins) and any(abs(m) > 1e-3 for m in margins)  # training moved the margins
    _check(tr.evaluate(), margins)


def test_lora_evaluation_uses_the_policy_with_its_adapter_disabled_as_reference(tmp_path):
    pairs = load_pairs(tiny_pairs())
    tr = TIDPOTrainer(loaded_tiny(), pairs, fast_config("dpo", use_lora=True, lora_r=4, lora_dropout=0.0,
                                                        learning_rate=5e-2), tmp_path / "run", eval_pairs=pairs)
    assert tr.reference is None
    for step in range(3):
        tr.step(step)
    margins = _hand_margins(tr.policy.eval(), loaded_tiny().model.eval(), tr.eval_encoded, tr.config.beta)
    assert not all(math.isclose(m, 0.0, abs_tol=1e-6) for m in margins)
    _check(tr.evaluate(), margins)
