"""Attribution methods on the tiny model: properties, not shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiviz.attribution import attribute, list_methods
from tiviz.attribution.gradient import embed, forward_logits
from tiviz.attribution.hybrid import hybrid_weights
from tiviz.attribution.targets import target_value
from tiviz.errors import ConfigError
from tiviz.table import COLUMNS, provenance
from tiviz.testing import tiny_model
from tiviz.tokenization import collate, encode_pair

GRAD_METHODS = ["gradient", "grad_x_input", "integrated_gradients", "attention", "tidpo"]


def seq_target(model, batch, emb, name="logprob"):
    logits = forward_logits(model, emb, batch.attention_mask, batch.position_ids)
    B = emb.shape[0]
    return target_value(name, logits, batch.input_ids, batch.attention_mask, batch.response_mask,
                        torch.ones(B, dtype=emb.dtype), torch.zeros(B, dtype=emb.dtype), 1.0)


@pytest.mark.parametrize("target", ["logprob", "max_logit"])
def test_gradient_matches_finite_differences(tok, pairs, target):
    """The L2 `gradient` score of token i is the directional derivative along its own gradient direction.

    Llama's RMSNorm computes in float32 even in a float64 model, so the step is 1e-3 (central differences,
    error O(h^2); embeddings have norm ~0.1) and the tolerance 1 %.
    """
    model = tiny_model().double()
    seqs = list(encode_pair(tok, pairs[0]))
    batch = collate(seqs, tok.pad_token_id)
    emb = embed(model, batch.input_ids).double().requires_grad_(True)
    (grad,) = torch.autograd.grad(seq_target(model, batch, emb, target).sum(), emb)
    emb = emb.detach()
    df = attribute(model, pairs[:1], ["gradient"], tokenizer=tok, target=target, norm="l2")
    h = 1e-3
    for row, side in enumerate(("chosen", "rejected")):
        scores = df[df.side == side].sort_values("position").score.to_numpy()
        n = len(seqs[row])
        top = np.argsort(scores)[-3:]  # the three tokens with most gradient
        for i in [*top, n - 2]:
            u = torch.zeros_like(emb)
            u[row, i] = grad[row, i] / grad[row, i].norm()
            with torch.no_grad():
                up, down = seq_target(model, batch, emb + h * u, target), seq_target(model, batch, emb - h * u, target)
            fd = ((up - down) / (2 * h))[row].item()
            assert scores[i] == pytest.approx(fd, rel=1e-2, abs=1e-4), (side, i)


def test_gradient_norms(tok, pairs, model):
    l1 = attribute(model, pairs[:1], ["gradient"], tokenizer=tok, norm="l1")
    l2 = attribute(model, pairs[:1], ["gradient"], tokenizer=tok, norm="l2")
    assert (l1.score >= l2.score - 1e-9).all() and (l2.score > 0).any()


def test_integrated_gradients_completeness(tok, pairs):
    model = tiny_model().double()
    df = attribute(model, pairs, ["integrated_gradients"], tokenizer=tok, n_steps=64)
    per_seq = df.groupby(["pair_id", "side"]).agg(total=("score", "sum"), delta=("convergence_delta", "first"))
    diff = per_seq.total - per_seq.delta  # = f(x) - f(baseline)
    assert (diff.abs() > 1e-3).all()
    assert (per_seq.delta.abs() / diff.abs()).max() < 0.01
    # prompt tokens are the unchanged part of the path: zero attribution by construction
    assert (df[~df.in_response].score == 0).all()


@pytest.mark.parametrize("method", GRAD_METHODS)
def test_padding_side_and_batching_do_not_change_scores(tok, pairs, model, method):
    kw = {"n_steps": 4} if method == "integrated_gradients" else {}
    right = attribute(model, pairs, [method], tokenizer=tok, padding_side="right", batch_size=4, **kw)
    left = attribute(model, pairs, [method], tokenizer=tok, padding_side="left", batch_size=4, **kw)
    single = attribute(model, pairs, [method], tokenizer=tok, batch_size=1, **kw)
    np.testing.assert_allclose(right.score, left.score, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(right.score, single.score, rtol=1e-4, atol=1e-6)


def test_tidpo_equals_hybrid_weights_of_max_logit_gradient(tok, pairs, model):
    df = attribute(model, pairs[:2], ["tidpo", "gradient"], tokenizer=tok, target="max_logit", lam=0.7)
    for _, g in df.groupby(["pair_id", "side"]):
        grad = g[g.method == "gradient"].sort_values("position")
        tid = g[g.method == "tidpo"].sort_values("position")
        span = torch.tensor(grad.in_response.values).unsqueeze(0)
        expect = hybrid_weights(torch.tensor(grad.score.values).unsqueeze(0), span)[0]
        np.testing.assert_allclose(tid.score.values, expect.numpy(), rtol=1e-5, atol=1e-6)
        assert tid[tid.in_response].score.mean() == pytest.approx(1.0, abs=1e-5)


def test_table_rows_weights_and_provenance(tok, pairs, model):
    df = attribute(model, pairs, GRAD_METHODS, tokenizer=tok, n_steps=4)
    assert list(df.columns) == list(COLUMNS)
    for p in pairs:
        for side, seq in zip(("chosen", "rejected"), encode_pair(tok, p), strict=True):
            rows = df[(df.pair_id == p.id) & (df.side == side)]
            assert sorted(rows.method.unique()) == sorted(GRAD_METHODS)
            assert len(rows) == len(seq) * len(GRAD_METHODS)
            resp = rows[rows.in_response]
            assert "".join(resp[resp.method == "gradient"].sort_values("position").text) == p.response_text(side)
    sums = df[df.in_response].groupby(["pair_id", "side", "method"]).weight.sum()
    np.testing.assert_allclose(sums, 1.0, rtol=1e-6)
    prov = provenance(df)
    assert prov["methods"] == GRAD_METHODS and prov["method_targets"]["tidpo"] == "max_logit"
    assert prov["settings"]["n_steps"] == 4 and prov["tiviz_version"]


def test_attention_last_layer_by_hand(tok, pairs, model):
    df = attribute(model, pairs[:1], ["attention"], tokenizer=tok)
    seq = encode_pair(tok, pairs[0])[0]
    with torch.no_grad():
        att = model(torch.tensor([seq.input_ids]), output_attentions=True).attentions[-1][0].mean(0)  # (T, T)
    T = len(seq)
    expect = [att[j:, j].sum().item() / (T - j) for j in range(T)]
    got = df[df.side == "chosen"].sort_values("position").score
    np.testing.assert_allclose(got, expect, rtol=1e-5)


def test_attention_rollout_is_a_distribution(tok, pairs, model):
    df = attribute(model, pairs[:2], ["attention"], tokenizer=tok, attention_agg="rollout")
    sums = df.groupby(["pair_id", "side"]).score.sum()
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)


def test_implicit_reward_needs_reference_and_is_zero_against_itself(tok, pairs, model):
    with pytest.raises(ConfigError, match="ref_model"):
        attribute(model, pairs[:1], ["implicit_reward"], tokenizer=tok)
    same = attribute(model, pairs[:1], ["implicit_reward"], tokenizer=tok, ref_model=tiny_model(seed=0))
    assert (same.score == 0).all()
    other = attribute(model, pairs[:1], ["implicit_reward"], tokenizer=tok, ref_model=tiny_model(seed=1), beta=0.5)
    resp = other[other.in_response]
    assert (resp.score != 0).all() and (other[~other.in_response].score == 0).all()
    totals = resp.groupby("side").agg(s=("score", "sum"), t=("target_value", "first"))
    np.testing.assert_allclose(totals.s, totals.t, rtol=1e-5)


def test_margin_target_flips_the_rejected_sign(tok, pairs, model):
    lp = attribute(model, pairs[:1], ["grad_x_input"], tokenizer=tok, target="logprob")
    mg = attribute(model, pairs[:1], ["grad_x_input"], tokenizer=tok, target="margin")
    np.testing.assert_allclose(mg[mg.side == "chosen"].score, lp[lp.side == "chosen"].score, rtol=1e-5)
    np.testing.assert_allclose(mg[mg.side == "rejected"].score, -lp[lp.side == "rejected"].score, rtol=1e-5)


def test_unknown_method_and_bad_settings(tok, pairs, model):
    assert "tidpo" in list_methods()
    with pytest.raises(ConfigError, match="methods"):
        attribute(model, pairs, ["saliency_maps"], tokenizer=tok)
    with pytest.raises(ConfigError, match="n_steps"):
        attribute(model, pairs, ["gradient"], tokenizer=tok, n_steps=0)


def test_integrated_gradients_refines_only_incomplete_sequences(tok, pairs):
    model = tiny_model().double()

    def rel_errors(**kw):
        df = attribute(model, pairs, ["integrated_gradients"], tokenizer=tok, n_steps=2, **kw)
        g = df.groupby(["pair_id", "side"]).agg(total=("score", "sum"), delta=("convergence_delta", "first"))
        return (g.delta.abs() / (g.total - g.delta).abs()), df

    coarse, coarse_df = rel_errors(ig_tolerance=0)
    refined, refined_df = rel_errors(ig_tolerance=0.01, ig_max_steps=64)
    assert coarse.max() > 0.01  # two steps are not enough somewhere, so refinement has work to do
    assert refined.max() <= 0.01
    done_at_2 = coarse[coarse <= 0.01].index
    for pid, side in done_at_2:  # sequences complete at 2 steps keep their 2-step scores
        a = coarse_df[(coarse_df.pair_id == pid) & (coarse_df.side == side)].score.to_numpy()
        b = refined_df[(refined_df.pair_id == pid) & (refined_df.side == side)].score.to_numpy()
        np.testing.assert_allclose(a, b)
