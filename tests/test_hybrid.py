"""TI-DPO hybrid weights against hand-computed values (TI-DPO Eq. 5-7, docs/METHOD.md §2)."""

from __future__ import annotations

import math

import pytest
import torch

from tiviz.attribution.hybrid import gaussian_prior, hybrid_weights, last_valid_index, normalise_importance


def hand_prior(T: int, div: float = 4.0) -> list[float]:
    mu, sigma = (T - 1) / 2, T / div
    p = [math.exp(-0.5 * ((t - mu) / sigma) ** 2) for t in range(T)]
    return [x / sum(p) for x in p]


def test_prior_matches_hand_computation_on_a_span_with_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0]])  # span of 4 inside padding
    got = gaussian_prior(mask)[0]
    assert got[[0, 1, 6]].tolist() == [0.0, 0.0, 0.0]
    assert got[2:6].tolist() == pytest.approx(hand_prior(4), abs=1e-6)
    # T=4: mu=1.5, sigma=1 -> exp(-1.125), exp(-0.125) symmetric
    a, b = math.exp(-1.125), math.exp(-0.125)
    assert got[2].item() == pytest.approx(a / (2 * a + 2 * b), abs=1e-6)


def test_sigma_divisor_changes_width():
    mask = torch.ones(1, 9)
    assert gaussian_prior(mask, 8.0)[0].tolist() == pytest.approx(hand_prior(9, 8.0), abs=1e-6)
    assert gaussian_prior(mask, 8.0)[0, 4] > gaussian_prior(mask, 4.0)[0, 4]


def test_lambda_limits_and_mix():
    imp = torch.tensor([[1.0, 3.0, 0.0, 4.0]])
    mask = torch.ones(1, 4)
    i_norm = torch.tensor([0.125, 0.375, 0.0, 0.5])
    prior = torch.tensor(hand_prior(4))
    assert hybrid_weights(imp, mask, lam=1.0)[0].tolist() == pytest.approx((i_norm * 4).tolist(), abs=1e-6)
    assert hybrid_weights(imp, mask, lam=0.0)[0].tolist() == pytest.approx((prior * 4).tolist(), abs=1e-6)
    mixed = 0.7 * i_norm + 0.3 * prior
    assert hybrid_weights(imp, mask)[0].tolist() == pytest.approx((mixed * 4).tolist(), abs=1e-6)
    assert hybrid_weights(imp, mask, scale="sum1")[0].tolist() == pytest.approx(mixed.tolist(), abs=1e-6)
    assert hybrid_weights(imp, mask, use_prior=False)[0].tolist() == pytest.approx((i_norm * 4).tolist(), abs=1e-6)


def test_weights_mean_one_over_span_and_zero_outside():
    imp = torch.rand(3, 10)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, 2:9] = True
    mask[1, :3] = True
    mask[2, 5] = True  # a single token: uniform
    w = hybrid_weights(imp, mask)
    assert (w[~mask] == 0).all()
    for row in range(3):
        assert w[row][mask[row]].mean().item() == pytest.approx(1.0, abs=1e-6)
    assert w[2, 5].item() == pytest.approx(1.0)


def test_padding_side_does_not_change_weights():
    imp = torch.tensor([[0.5, 2.0, 1.0, 0.0, 0.0]])
    right = torch.tensor([[1, 1, 1, 0, 0]])
    left_imp = torch.tensor([[0.0, 0.0, 0.5, 2.0, 1.0]])
    left = torch.tensor([[0, 0, 1, 1, 1]])
    assert hybrid_weights(imp, right)[0, :3].tolist() == pytest.approx(hybrid_weights(left_imp, left)[0, 2:].tolist())


def test_zero_importance_is_uniform_and_last_valid_index():
    assert normalise_importance(torch.zeros(1, 4), torch.ones(1, 4))[0].tolist() == [0.25] * 4
    assert last_valid_index(torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]])).tolist() == [1, 3, 2]
