"""Hand-computed values and properties of the TI-DPO loss functions (docs/METHOD.md §3 to §5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from tiviz.attribution.hybrid import hybrid_weights
from tiviz.training.losses import (
    align_responses,
    preference_metrics,
    sequential_kl,
    tidpo_dpo_loss,
    token_log_ratios,
    total_loss,
    triplet_loss,
    weight_entropy,
    weighted_dpo_delta,
)

INF = float("inf")
JUNK = 100.0  # prompt / padding values that must never reach a result


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def m(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z))


# A two-pair batch written out by hand. Chosen sequences have 4 positions, rejected 5 (they are tokenised
# separately). Pair 0: chosen right-aligned without padding, rejected left-padded; pair 1: chosen right-padded.
# Outside the response masks the log-probs and weights are junk (even -inf), which must not matter.
POLICY_W = [[0.0, -1.0, -0.5, -2.0], [0.0, -0.3, -1.0, -INF]]
REF_W = [[0.0, -1.2, -0.7, -1.5], [0.0, -0.9, -0.4, -2.0]]
MASK_W = [[0, 0, 1, 1], [0, 1, 1, 0]]
W_W = [[9.0, 9.0, 1.5, 0.5], [9.0, 0.7, 1.3, 9.0]]
POLICY_L = [[-INF, -3.0, -1.0, -1.0, -3.0], [0.0, -2.0, -0.2, -0.1, -0.6]]
REF_L = [[-INF, -2.0, -2.0, -1.5, -2.0], [0.0, -1.0, -0.5, -0.4, -0.1]]
MASK_L = [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
W_L = [[9.0, 9.0, 9.0, 0.8, 1.2], [9.0, 9.0, 1.0, 1.0, 1.0]]


def hand_delta(pair: int, weighted: bool = True) -> float:
    """`sum_t W^w lr^w - sum_t W^l lr^l` with plain python loops."""
    total = 0.0
    for pol, ref, mask, w, sign in (
        (POLICY_W, REF_W, MASK_W, W_W, 1.0),
        (POLICY_L, REF_L, MASK_L, W_L, -1.0),
    ):
        for i in range(len(mask[pair])):
            if mask[pair][i]:
                total += sign * (w[pair][i] if weighted else 1.0) * (pol[pair][i] - ref[pair][i])
    return total


def batch_log_ratios() -> tuple[torch.Tensor, torch.Tensor]:
    lr_w = token_log_ratios(t(POLICY_W), t(REF_W), m(MASK_W))  # (2, 4)
    lr_l = token_log_ratios(t(POLICY_L), t(REF_L), m(MASK_L))  # (2, 5)
    return lr_w, lr_l


def test_token_log_ratios_by_hand_and_zero_outside_mask():
    lr_w, lr_l = batch_log_ratios()
    expected_w = [[0.0, 0.0, 0.2, -0.5], [0.0, 0.6, -0.6, 0.0]]
    expected_l = [[0.0, 0.0, 0.0, 0.5, -1.0], [0.0, 0.0, 0.3, 0.3, -0.5]]
    torch.testing.assert_close(lr_w, t(expected_w), rtol=0, atol=1e-12)
    torch.testing.assert_close(lr_l, t(expected_l), rtol=0, atol=1e-12)
    assert torch.isfinite(lr_w).all() and torch.isfinite(lr_l).all()  # -inf and inf - inf masked out


def test_weighted_delta_by_hand():
    lr_w, lr_l = batch_log_ratios()
    delta = weighted_dpo_delta(lr_w, t(W_W), lr_l, t(W_L), m(MASK_W), m(MASK_L))
    # pair 0: (1.5*0.2 + 0.5*-0.5) - (0.8*0.5 + 1.2*-1.0) = 0.05 + 0.8 = 0.85
    # pair 1: (0.7*0.6 + 1.3*-0.6) - (0.3 + 0.3 - 0.5) = -0.36 - 0.1 = -0.46
    assert delta.tolist() == pytest.approx([0.85, -0.46], abs=1e-12)
    assert delta.tolist() == pytest.approx([hand_delta(0), hand_delta(1)], abs=1e-12)


def test_uniform_weights_give_dpo_sequence_log_ratio_difference():
    lr_w, lr_l = batch_log_ratios()
    ones_w, ones_l = torch.ones_like(lr_w), torch.ones_like(lr_l)
    delta = weighted_dpo_delta(lr_w, ones_w, lr_l, ones_l, m(MASK_W), m(MASK_L))
    assert delta.tolist() == pytest.approx([hand_delta(0, False), hand_delta(1, False)], abs=1e-12)


def test_tidpo_loss_by_hand_two_pairs():
    """Loss with and without the sequential-KL term against plain python on a two-pair batch."""
    beta, alpha = 0.1, 0.5
    lr_w, lr_l = batch_log_ratios()
    delta = weighted_dpo_delta(lr_w, t(W_W), lr_l, t(W_L), m(MASK_W), m(MASK_L))
    kl_w, kl_l = [0.3, 0.1], [0.6, 0.05]

    plain = tidpo_dpo_loss(delta, beta=beta, alpha_kl=0.0)
    assert plain.tolist() == pytest.approx([-log_sigmoid(beta * 0.85), -log_sigmoid(beta * -0.46)], abs=1e-12)

    with_kl = tidpo_dpo_loss(delta, torch.tensor(kl_w), torch.tensor(kl_l), beta=beta, alpha_kl=alpha)
    expected = [-log_sigmoid(beta * (d - alpha * (kl_l[i] - kl_w[i]))) for i, d in enumerate([0.85, -0.46])]
    assert with_kl.tolist() == pytest.approx(expected, abs=1e-7)

    # the objective averages over pairs and adds the triplet term
    assert total_loss(with_kl, torch.tensor(0.4), gamma=0.1).item() == pytest.approx(
        sum(expected) / 2 + 0.1 * 0.4, abs=1e-7
    )
    assert total_loss(plain, 0.0, gamma=0.1).item() == pytest.approx(plain.mean().item())


def test_alpha_zero_is_plain_dpo_whatever_the_kl():
    delta = torch.tensor([0.85, -0.46, 3.0])
    kl = torch.tensor([5.0, 0.0, 2.0])
    plain = tidpo_dpo_loss(delta, beta=0.2, alpha_kl=0.0)
    torch.testing.assert_close(tidpo_dpo_loss(delta, kl, kl.flip(0), beta=0.2, alpha_kl=0.0), plain)
    torch.testing.assert_close(plain, -torch.log(torch.sigmoid(0.2 * delta)))


def test_kl_term_stops_gradient_through_chosen_kl():
    """d L / d SeqKL_w = 0 (stopgrad); d L / d SeqKL_l = beta * alpha * sigmoid(-z) > 0, by hand."""
    beta, alpha = 0.1, 0.5
    delta = torch.tensor([0.85, -0.46], dtype=torch.float64)
    kl_w = torch.tensor([0.3, 0.1], dtype=torch.float64, requires_grad=True)
    kl_l = torch.tensor([0.6, 0.05], dtype=torch.float64, requires_grad=True)
    tidpo_dpo_loss(delta, kl_w, kl_l, beta=beta, alpha_kl=alpha).sum().backward()
    assert kl_w.grad is None or torch.all(kl_w.grad == 0)
    z = [beta * (0.85 - alpha * 0.3), beta * (-0.46 - alpha * -0.05)]
    expected = [beta * alpha / (1 + math.exp(zi)) for zi in z]
    assert kl_l.grad is not None
    assert kl_l.grad.tolist() == pytest.approx(expected, abs=1e-12)


def test_kl_term_needs_kls():
    with pytest.raises(ValueError, match="seq_kl"):
        tidpo_dpo_loss(torch.zeros(2), beta=0.1, alpha_kl=0.5)


# --- sequential KL ---------------------------------------------------------------------------------------------


def kl_logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    policy = torch.randn(2, 6, 7, generator=g)  # (B, L, V)
    ref = torch.randn(2, 6, 7, generator=g)
    mask = m([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])  # right- and left-aligned responses
    return policy, ref, mask


def test_sequential_kl_zero_when_policy_is_reference():
    policy, _, mask = kl_logits()
    assert torch.all(sequential_kl(policy, policy.clone(), mask) == 0)


def test_sequential_kl_matches_torch_distributions():
    """`sum_{t in response} KL(Cat(ref[t-1]) || Cat(policy[t-1]))`, token t predicted by the logits at t-1."""
    policy, ref, mask = kl_logits()
    got = sequential_kl(policy, ref, mask)
    for b in range(2):
        expected = sum(
            kl_divergence(Categorical(logits=ref[b, pos - 1]), Categorical(logits=policy[b, pos - 1])).item()
            for pos in range(6)
            if mask[b, pos]
        )
        assert got[b].item() == pytest.approx(expected, rel=1e-5)
    assert torch.all(got > 0)


def test_sequential_kl_reads_the_logits_that_predict_response_tokens():
    policy, ref, mask = kl_logits()
    base = sequential_kl(policy, ref, mask)
    moved = policy.clone()
    moved[:, -1] += 5 * torch.randn(2, 7)  # the last position predicts no token of the sequence
    torch.testing.assert_close(sequential_kl(moved, ref, mask), base)
    moved = policy.clone()
    moved[0, 1] += torch.arange(7.0)  # predicts the first response token of row 0
    changed = sequential_kl(moved, ref, mask)
    assert changed[0] != base[0] and changed[1] == base[1]


def test_sequential_kl_gradient_reaches_policy_only():
    policy, ref, mask = kl_logits()
    policy.requires_grad_(True)
    ref.requires_grad_(True)
    sequential_kl(policy, ref, mask).sum().backward()
    assert policy.grad is not None and policy.grad.abs().sum() > 0
    assert ref.grad is None
    # only the logits that predict response tokens get gradient
    predicts_response = torch.nn.functional.pad(mask[:, 1:], (0, 1))  # (B, L): position t-1 predicts t
    assert torch.all(policy.grad[~predicts_response] == 0)


# --- alignment and triplet --------------------------------------------------------------------------------------

P = JUNK  # a prompt position's value
X = -JUNK  # a padding position's value

# Each row as (prompt + response values, response mask), unpadded. Response-aligned contents:
#   row 0: anchor [1, 2, 3], chosen [1, 1], rejected [0, 0, 0, 5];
#   row 1: anchor [0.5],     chosen [2, 9], rejected [0.5, 7].
Row = tuple[list[float], list[int]]
ANCHOR: list[Row] = [([P, P, 1.0, 2.0, 3.0], [0, 0, 1, 1, 1]), ([P, P, P, 0.5], [0, 0, 0, 1])]
CHOSEN: list[Row] = [([P, P, 1.0, 1.0], [0, 0, 1, 1]), ([P, P, P, P, 2.0, 9.0], [0, 0, 0, 0, 1, 1])]
REJECTED: list[Row] = [([P, 0.0, 0.0, 0.0, 5.0], [0, 1, 1, 1, 1]), ([P, P, 0.5, 7.0], [0, 0, 1, 1])]
# Row 0: d_pos = 0 + 1 = 1 (2 common positions), d_neg = 1 + 4 + 9 = 14 (3) -> relu(1 - 14 + m) = 0
# Row 1: d_pos = (0.5 - 2)^2 = 2.25 (1), d_neg = 0 (1) -> 2.25 + m
MARGIN = 0.001
TRIPLET_BY_HAND = (0.0 + (2.25 + MARGIN)) / 2


def padded(rows: list[Row], sides: list[str], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad each row to `width` on its side ("left" or "right"); padding gets junk values and mask 0."""
    values, masks = [], []
    for (row, mrow), side in zip(rows, sides, strict=True):
        pad = width - len(row)
        values.append([X] * pad + row if side == "left" else row + [X] * pad)
        masks.append([0] * pad + mrow if side == "left" else mrow + [0] * pad)
    return t(values), m(masks)


# (sides, width) per tensor: widths differ across the three, rows mix padding sides.
LAYOUT = {
    "anchor": (["right", "left"], 7),
    "chosen": (["left", "right"], 7),
    "rejected": (["right", "left"], 8),
}
FLIPPED = {
    "anchor": (["left", "right"], 6),
    "chosen": (["right", "left"], 9),
    "rejected": (["left", "right"], 5),
}


def triplet_inputs(layout: dict[str, tuple[list[str], int]]) -> list[torch.Tensor]:
    inputs: list[torch.Tensor] = []
    for name, rows in (("anchor", ANCHOR), ("chosen", CHOSEN), ("rejected", REJECTED)):
        inputs.extend(align_responses(*padded(rows, *layout[name])))
    return inputs


def test_align_responses_by_hand():
    values, mask = align_responses(*padded(ANCHOR, *LAYOUT["anchor"]))
    assert values.tolist() == [[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    values, mask = align_responses(*padded(CHOSEN, *LAYOUT["chosen"]))
    assert values.tolist() == [[1.0, 1.0], [2.0, 9.0]]
    assert mask.all()


def test_align_responses_is_padding_side_free_and_keeps_order():
    for name, rows in (("anchor", ANCHOR), ("chosen", CHOSEN), ("rejected", REJECTED)):
        a = align_responses(*padded(rows, *LAYOUT[name]))
        b = align_responses(*padded(rows, *FLIPPED[name]))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    scattered, smask = align_responses(t([[1.0, 2.0, 3.0, 4.0]]), m([[1, 0, 1, 1]]))  # non-contiguous
    assert scattered.tolist() == [[1.0, 3.0, 4.0]] and smask.all()
    empty, emask = align_responses(t([[1.0, 2.0]]), m([[0, 0]]))
    assert empty.shape == (1, 0) and emask.shape == (1, 0)


def test_triplet_by_hand_unequal_lengths_and_mixed_padding():
    assert triplet_loss(*triplet_inputs(LAYOUT), margin=MARGIN).item() == pytest.approx(
        TRIPLET_BY_HAND, abs=1e-12
    )
    assert triplet_loss(*triplet_inputs(FLIPPED), margin=MARGIN).item() == pytest.approx(
        TRIPLET_BY_HAND, abs=1e-12
    )


def test_triplet_gradient_by_hand_reaches_anchor_positions():
    """Row 1 is active: d/da_0 [(a-2)^2 - (a-0.5)^2] / B = 2 (0.5 - 2) / 2 = -1.5; row 0 (inactive) gets 0."""
    values, mask = padded(ANCHOR, *LAYOUT["anchor"])
    anchor = values.requires_grad_(True)
    loss = triplet_loss(*align_responses(anchor, mask), *triplet_inputs(LAYOUT)[2:], margin=MARGIN)
    loss.backward()
    assert anchor.grad is not None
    expected = torch.zeros_like(anchor)
    expected[1, 6] = -1.5  # row 1 is left-padded to 7: its one response token is the last position
    torch.testing.assert_close(anchor.grad, expected, rtol=0, atol=1e-12)


def test_triplet_equal_distances_give_margin():
    a = t([[1.0, 2.0]])
    ones = torch.ones(1, 2, dtype=torch.bool)
    assert triplet_loss(a, ones, a + 1, ones, a - 1, ones, margin=0.25).item() == pytest.approx(0.25)
    assert triplet_loss(a, ones, a, ones, a + 3, ones, margin=0.25).item() == 0.0  # anchor on the chosen


# --- metrics ------------------------------------------------------------------------------------------------------


def test_preference_metrics_by_hand_unweighted():
    lr_w, lr_l = batch_log_ratios()
    got = preference_metrics(lr_w, lr_l, m(MASK_W), m(MASK_L), beta=0.5)
    # sums: chosen [0.2 - 0.5, 0.6 - 0.6] = [-0.3, 0.0]; rejected [0.5 - 1.0, 0.3 + 0.3 - 0.5] = [-0.5, 0.1]
    chosen, rejected = [0.5 * -0.3, 0.0], [0.5 * -0.5, 0.5 * 0.1]
    assert got["rewards/chosen"] == pytest.approx(sum(chosen) / 2)
    assert got["rewards/rejected"] == pytest.approx(sum(rejected) / 2)
    assert got["rewards/margins"] == pytest.approx((chosen[0] - rejected[0] + chosen[1] - rejected[1]) / 2)
    assert got["rewards/accuracies"] == 0.5  # pair 0 right (-0.15 > -0.25), pair 1 wrong (0 < 0.05)


def test_weight_entropy_by_hand():
    w = t([[5.0, 1.0, 1.0, 1.0], [9.0, 1.0, 3.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    mask = m([[0, 1, 1, 1], [0, 1, 1, 0], [1, 1, 1, 0]])
    h = weight_entropy(w, mask)
    expected = [math.log(3), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), 0.0]
    assert h.tolist() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(weight_entropy(7 * w, mask), h)  # scale-free
    assert weight_entropy(w, torch.zeros_like(mask)).tolist() == [0.0, 0.0, 0.0]


def test_weight_entropy_same_for_mean1_and_sum1_hybrid_weights():
    g = torch.Generator().manual_seed(1)
    importance = torch.rand(3, 9, generator=g)
    span = m([[0, 0, 1, 1, 1, 1, 1, 0, 0], [1] * 9, [0, 0, 0, 0, 0, 0, 1, 1, 1]])
    mean1 = hybrid_weights(importance, span, scale="mean1")
    sum1 = hybrid_weights(importance, span, scale="sum1")
    torch.testing.assert_close(weight_entropy(mean1, span), weight_entropy(sum1, span))
    assert torch.all(weight_entropy(mean1, span) <= torch.log(span.sum(-1).double()).float() + 1e-6)
