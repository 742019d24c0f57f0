"""Quality scores on cases whose answer is known: hand-computed AP and hit@k, random-ranking expectations checked
over many seeds, perturbation targets equal to the attribution targets, an occlusion oracle beating its reverse,
and the end-to-end `evaluate` on the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tiviz.attribution import attribute
from tiviz.evaluation import (
    SCORE_COLUMNS,
    SequenceCurves,
    average_precision,
    evaluate,
    expected_random_ap,
    expected_random_hit,
    faithfulness_curves,
    hit_at_k,
    leave_one_out,
    margin_scores,
    perturbed_targets,
    ranking,
    rationale_labels,
    read_scores,
    reference_embedding,
    summarise,
    top_counts,
)
from tiviz.tokenization import collate, encode_pair

# ---------------------------------------------------------------------------------------------- plausibility


def test_rationale_labels_mark_tokens_whose_span_overlaps_an_occurrence():
    text = "Go to Paris, not Paris!"
    # tokens: "Go", " to", " Paris", ",", " not", " Par", "is", "!", EOS (empty span at the end)
    spans = [(0, 2), (2, 5), (5, 11), (11, 12), (12, 16), (16, 20), (20, 22), (22, 23), (23, 23)]
    labels = rationale_labels(spans, text, ["Paris"])
    assert labels.tolist() == [False, False, True, False, False, True, True, False, False]
    assert rationale_labels(spans, text, ["o t"]).tolist()[:3] == [True, True, False]  # spans two tokens
    assert not rationale_labels(spans, text, []).any()


def test_average_precision_hand_computed():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.5, 0.1]), np.array([1, 0, 1])) == pytest.approx(5 / 6)
    # the worst ranking of one positive among four: precision 1/4 at its rank
    assert average_precision(np.array([4.0, 3.0, 2.0, 1.0]), np.array([0, 0, 0, 1])) == pytest.approx(0.25)
    # all tied: a single threshold, precision = positive rate
    assert average_precision(np.zeros(5), np.array([1, 0, 0, 1, 0])) == pytest.approx(0.4)
    # NaN ranks last
    assert average_precision(np.array([np.nan, 1.0]), np.array([0, 1])) == 1.0
    assert math.isnan(average_precision(np.array([1.0, 2.0]), np.array([0, 0])))


def test_perfect_ranking_gets_auprc_and_hit_one():
    rng = np.random.default_rng(0)
    labels = rng.random(40) < 0.3
    scores = labels + 0.01 * rng.random(40)  # every positive above every negative
    assert average_precision(scores, labels) == 1.0
    assert hit_at_k(scores, labels) == 1.0


def test_hit_at_k_hand_computed_and_ties_share_the_cut():
    labels = np.array([1, 0, 1, 0, 0])
    assert hit_at_k(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), labels) == 0.5  # top-2 holds one positive
    assert hit_at_k(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), labels, k=3) == pytest.approx(2 / 3)
    # one slot left for the tie {a positive, a negative}: half a hit
    assert hit_at_k(np.array([5.0, 1.0, 3.0, 3.0, 0.0]), np.array([1, 0, 1, 0, 0])) == pytest.approx(0.75)


@pytest.mark.parametrize(("n", "p"), [(10, 3), (25, 5), (8, 1)])
def test_expected_random_ap_matches_random_rankings(n, p):
    rng = np.random.default_rng(1)
    labels = np.zeros(n, bool)
    labels[:p] = True
    aps = [average_precision(rng.random(n), labels) for _ in range(5_000)]
    se = np.std(aps) / math.sqrt(len(aps))
    assert abs(np.mean(aps) - expected_random_ap(n, p)) < 4 * se
    assert expected_random_ap(n, p) > p / n  # short sequences: above the positive rate


def test_random_ranking_auprc_is_the_positive_rate_for_long_sequences():
    n, p = 5000, 500
    labels = np.zeros(n, bool)
    labels[:p] = True
    rng = np.random.default_rng(2)
    aps = [average_precision(rng.random(n), labels) for _ in range(200)]
    assert np.mean(aps) == pytest.approx(p / n, abs=0.004)
    assert expected_random_ap(n, p) == pytest.approx(p / n, abs=0.002)


def test_expected_random_hit_matches_random_rankings():
    n, p = 12, 4
    labels = np.zeros(n, bool)
    labels[:p] = True
    rng = np.random.default_rng(3)
    hits = [hit_at_k(rng.random(n), labels) for _ in range(5_000)]
    assert np.mean(hits) == pytest.approx(expected_random_hit(n, p), abs=4 * np.std(hits) / math.sqrt(5_000))


# ---------------------------------------------------------------------------------------------- faithfulness


def test_top_counts_ceil_at_least_one():
    assert top_counts(27, (0.01, 0.05, 0.10, 0.20, 0.50)).tolist() == [1, 2, 3, 6, 14]
    assert top_counts(10, (0.3, 0.7, 1.0)).tolist() == [3, 7, 10]  # no float round-up (0.3 * 10 = 3.0000000004)


def test_ranking_breaks_ties_at_random_and_puts_nan_last():
    rng = np.random.default_rng(0)
    order = ranking(np.array([1.0, np.nan, 3.0, 1.0]), rng)
    assert order[0] == 2 and order[-1] == 1
    firsts = {tuple(ranking(np.array([2.0, 1.0, 1.0]), np.random.default_rng(s))[1:]) for s in range(20)}
    assert firsts == {(1, 2), (2, 1)}


@pytest.fixture(scope="module")
def tiny():
    from tiviz.data import load_pairs
    from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer

    tok = tiny_tokenizer()
    return tiny_model(seed=0), tok, load_pairs(tiny_pairs())


def test_perturbed_targets_equal_the_attribution_targets(tiny):
    from tiviz.attribution.targets import target_value

    model, tok, pairs = tiny
    seq = encode_pair(tok, pairs[1])[1]
    b = collate([seq], tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    one, zero = torch.ones(1), torch.zeros(1)
    ref = reference_embedding(model, tok)
    rng = np.random.default_rng(0)
    keep = rng.random((5, seq.n_response)) < 0.6
    keep[0] = True
    cached = perturbed_targets(model, seq.input_ids, seq.response_start, keep, ref, batch_size=2)
    plain = perturbed_targets(model, seq.input_ids, seq.response_start, keep, ref, prompt_cache=False)
    for name in ("logprob", "max_logit"):
        want = float(target_value(name, logits, b.input_ids, b.attention_mask, b.response_mask, one, zero, 1.0))
        assert cached[name][0] == pytest.approx(want, rel=1e-5, abs=1e-4)
        np.testing.assert_allclose(cached[name], plain[name], rtol=1e-5, atol=1e-4)
    assert np.ptp(cached["logprob"]) > 1e-3  # the perturbations do move the target
    # removing a token = feeding the pad embedding there: compare with input ids that hold the pad token
    ids = list(seq.input_ids)
    ids[seq.response_start + 2] = tok.pad_token_id
    with torch.no_grad():
        lg = model(input_ids=torch.tensor([ids])).logits
    lp = target_value("logprob", lg, torch.tensor([seq.input_ids]), b.attention_mask, b.response_mask, one, zero, 1.0)
    mask = np.ones((1, seq.n_response), bool)
    mask[0, 2] = False
    got = perturbed_targets(model, seq.input_ids, seq.response_start, mask, ref)["logprob"][0]
    assert got == pytest.approx(float(lp), rel=1e-5)


def test_summarise_hand_built_curves():
    fr = np.array([0.1, 0.5])
    c = SequenceCurves(fractions=fr, counts=np.array([1, 5]), full={"logprob": -10.0}, empty={"logprob": -30.0},
                       deletion={"m": {"logprob": np.array([-12.0, -20.0])}},
                       insertion={"m": {"logprob": np.array([-25.0, -15.0])}})
    s = summarise(c, "m", "logprob", curve_fractions=(0.1, 0.5), eraser_fractions=(0.5,))
    assert s["aopc_deletion"] == pytest.approx((2 + 10) / 2)
    assert s["aopc_insertion"] == pytest.approx((5 + 15) / 2)
    assert s["comprehensiveness"] == pytest.approx(10.0)
    assert s["sufficiency"] == pytest.approx(5.0)


def test_occlusion_oracle_beats_its_reverse(tiny):
    """Ranking by the model's own leave-one-out effects deletes the target faster than the reverse ranking."""
    model, tok, pairs = tiny
    ref = reference_embedding(model, tok)
    for seq in encode_pair(tok, pairs[1]):  # "2 + 2 = 4." / "2 + 2 = 5.": 11 response tokens each
        loo = leave_one_out(model, seq.input_ids, seq.response_start, ref)
        assert loo.shape == (seq.n_response,)
        oracle = np.argsort(-loo, kind="stable")
        curves = faithfulness_curves(model, seq.input_ids, seq.response_start,
                                     {"oracle": oracle, "reversed": oracle[::-1]}, ref)
        good, bad = summarise(curves, "oracle"), summarise(curves, "reversed")
        assert good["aopc_deletion"] > bad["aopc_deletion"]
        assert good["comprehensiveness"] > bad["comprehensiveness"]
        assert good["sufficiency"] < bad["sufficiency"]
        # the curve's first point for k = 1 is exactly the top leave-one-out effect
        assert curves.full["logprob"] - curves.deletion["oracle"]["logprob"][0] == pytest.approx(loo.max(), abs=1e-4)


def test_margin_scores_hand_built_curves_orient_both_sides():
    """Removing 2 nats of support lowers the margin by 2 on the chosen side, raises it by 2 on the rejected side:
    both count +2 (faithful), where a per-side score on the margin target would show -2 for rejected."""
    fr = np.array([0.1, 0.5])
    c = SequenceCurves(fractions=fr, counts=np.array([1, 5]), full={"logprob": -10.0}, empty={"logprob": -30.0},
                       deletion={"m": {"logprob": np.array([-12.0, -20.0])}},
                       insertion={"m": {"logprob": np.array([-25.0, -15.0])}})
    for side in ("chosen", "rejected"):
        got = margin_scores(c, "m", side, curve_fractions=(0.1, 0.5))
        assert got["margin_deletion"] == pytest.approx((2 + 10) / 2)
        assert got["margin_insertion"] == pytest.approx((5 + 15) / 2)
    assert margin_scores(c, "m", "rejected", scale=0.1, curve_fractions=(0.1,))["margin_deletion"] == \
        pytest.approx(0.2)
    with pytest.raises(ValueError, match="side"):
        margin_scores(c, "m", "both")


def test_margin_scores_equal_the_margin_recomputed_by_hand(tiny):
    """The pair's margin log pi(chosen) - log pi(rejected), recomputed from scratch with the side's top tokens set
    to the pad token (= the pad removal embedding), moves as margin_scores says."""
    from tiviz.attribution.targets import sequence_logp

    model, tok, pairs = tiny
    chosen, rejected = encode_pair(tok, pairs[1])

    def logp(seq, removed=()):
        ids = torch.tensor([seq.input_ids])
        x = ids.clone()
        for i in removed:
            x[0, seq.response_start + i] = tok.pad_token_id
        with torch.no_grad():
            return float(sequence_logp(model(input_ids=x).logits, ids, collate([seq], tok.pad_token_id).response_mask))

    margin = logp(chosen) - logp(rejected)
    ref = reference_embedding(model, tok)
    qs = (0.2, 0.5)
    for seq, side in ((chosen, "chosen"), (rejected, "rejected")):
        n = seq.n_response
        order = np.random.default_rng(3).permutation(n)
        curves = faithfulness_curves(model, seq.input_ids, seq.response_start, {"m": order}, ref, fractions=qs)
        got = margin_scores(curves, "m", side, curve_fractions=qs)
        moved = []
        for k in top_counts(n, qs):
            top = order[:k]
            after = logp(chosen, top) - logp(rejected) if side == "chosen" else logp(chosen) - logp(rejected, top)
            moved.append(after - margin)
        # chosen: the margin should fall (count its drop); rejected: it should rise (count its rise)
        want = np.mean(moved) * (-1 if side == "chosen" else 1)
        assert got["margin_deletion"] == pytest.approx(want, abs=1e-4)
        assert abs(want) > 1e-3


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def evaluated(tiny):
    model, tok, pairs = tiny
    return evaluate(model, pairs[1:3], "gradient,attention", tokenizer=tok, n_random=2, seed=0)


def test_evaluate_scores_every_method_beside_random(evaluated):
    s = evaluated.scores
    assert list(s.columns) == SCORE_COLUMNS
    assert s["method"].tolist() == ["gradient", "attention"]
    assert (s["n_sequences"] == 4).all() and (s["n_rationale_sequences"] == 4).all()
    assert s[["auprc", "auprc_random", "hit_at_k", "hit_at_k_random"]].stack().between(0, 1).all()
    # the random baselines are computed on the same tokens and the same target: equal for every method
    for c in ("auprc_random", "hit_at_k_random", "aopc_deletion_random", "sufficiency_random"):
        assert s[c].nunique() == 1
    ps = evaluated.per_sequence
    assert set(ps.columns) >= {"pair_id", "side", "method", "n_tokens", "n_rationale", "f_full", "f_empty"}
    g = ps[ps["method"] == "gradient"]
    assert s.loc[0, "aopc_deletion"] == pytest.approx(g["aopc_deletion"].mean())
    assert set(evaluated.curves["ranking"]) == {"method", "random"}
    assert len(evaluated.agreement) == 1  # one pair of methods
    for side in ("chosen", "rejected"):  # pair-level scores: the mean over that side's sequences
        gs = g[g["side"] == side]
        assert s.loc[0, f"margin_deletion_{side}"] == pytest.approx(gs["margin_deletion"].mean())
        assert s.loc[0, f"margin_insertion_{side}_random"] == pytest.approx(gs["margin_insertion_random"].mean())
    assert "pair-level" in evaluated.to_text()


def test_evaluate_is_seeded(tiny, evaluated):
    model, tok, pairs = tiny
    table = evaluated.table[evaluated.table["pair_id"] == "math"]
    table.attrs = evaluated.table.attrs
    runs = [evaluate(model, pairs[1:2], tokenizer=tok, table=table, n_random=2, seed=s).scores for s in (0, 0, 1)]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert runs[2]["aopc_deletion_random"].iloc[0] != runs[0]["aopc_deletion_random"].iloc[0]


def test_a_method_equal_to_the_rationale_gets_auprc_one(tiny, evaluated):
    model, tok, pairs = tiny
    table = evaluated.table.copy()
    oracle = table[table["method"] == "attention"].copy()
    oracle["method"] = "oracle"
    by_id = {p.id: p for p in pairs}
    for (pid, side), g in oracle[oracle["in_response"]].groupby(["pair_id", "side"]):
        p = by_id[pid]
        lab = rationale_labels(g[["char_start", "char_end"]].to_numpy(), p.response_text(side),
                               p.rationale_chosen if side == "chosen" else p.rationale_rejected)
        oracle.loc[g.index, "weight"] = lab.astype(float) + 0.01
    table = pd.concat([table, oracle], ignore_index=True)
    table.attrs = evaluated.table.attrs
    ev = evaluate(model, pairs[1:3], tokenizer=tok, table=table, faithfulness=False)
    row = ev.scores.set_index("method").loc["oracle"]
    assert row["auprc"] == 1.0 and row["hit_at_k"] == 1.0
    assert row["auprc_random"] < 1.0
    assert math.isnan(row["aopc_deletion"])  # faithfulness skipped


def test_reward_faithfulness_perturbs_the_reference_too(tiny):
    """The implicit reward with policy == reference is 0 under every perturbation, so every reward faithfulness
    score is 0; holding log pi_ref fixed would instead report beta x the logprob scores."""
    from tiviz.config import AttributionConfig
    from tiviz.testing import tiny_model

    model, tok, pairs = tiny
    cfg = AttributionConfig(target="reward", beta=0.5)
    same = evaluate(model, pairs[1:2], "gradient", tokenizer=tok, ref_model=tiny_model(seed=0), config=cfg,
                    target="method", n_random=2)
    ps = same.per_sequence
    cols = ["f_full", "aopc_deletion", "aopc_insertion", "margin_deletion", "margin_deletion_random"]
    assert np.abs(ps[cols].to_numpy()).max() < 1e-4
    plain = evaluate(model, pairs[1:2], "gradient", tokenizer=tok, n_random=2)  # logprob: far from 0
    assert plain.per_sequence["aopc_deletion"].abs().max() > 1e-2


def test_write_and_read_scores(tmp_path, evaluated):
    paths = evaluated.write(tmp_path)
    assert {p.name for p in paths} == {"scores.csv", "scores.json", "per_sequence.csv", "table.parquet"}
    back = read_scores(tmp_path)
    pd.testing.assert_frame_equal(back.scores, evaluated.scores, check_dtype=False)
    csv = pd.read_csv(tmp_path / "scores.csv")
    assert csv["auprc"].tolist() == pytest.approx(evaluated.scores["auprc"].tolist())
    doc = json.loads((tmp_path / "scores.json").read_text())
    assert doc["settings"]["n_random"] == 2 and doc["settings"]["provenance"]["model_id"]
    assert read_scores(tmp_path / "scores.csv").scores["method"].tolist() == ["gradient", "attention"]


def test_text_table_shows_value_and_random(evaluated):
    text = evaluated.to_text()
    first = text.splitlines()[1]
    s = evaluated.scores.iloc[0]
    assert first.startswith("gradient") and f"{s['auprc']:.3f} ({s['auprc_random']:.3f})" in first


def test_bad_settings_are_named(tiny):
    from tiviz.errors import ConfigError

    model, tok, pairs = tiny
    with pytest.raises(ConfigError, match="n_random"):
        evaluate(model, pairs[:1], "attention", tokenizer=tok, n_random=0)
    with pytest.raises(ConfigError, match="target"):
        evaluate(model, pairs[:1], "attention", tokenizer=tok, target="nope")  # type: ignore[arg-type]


def test_cli_evaluate_prints_and_writes(tmp_path, tiny, capsys):
    from tiviz.cli import main
    from tiviz.data import save_pairs
    from tiviz.models import save_model

    model, tok, pairs = tiny
    folder = save_model(model, tmp_path / "tiny", tokenizer=tok)
    save_pairs(pairs, tmp_path / "pairs.jsonl")
    rc = main(["evaluate", "--pairs", str(tmp_path / "pairs.jsonl"), "--model", str(folder), "--methods", "gradient",
               "--limit", "1", "--n-random", "2", "--out", str(tmp_path / "eval"), "--randomisation-check"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[0].split()[:3] == ["method", "AUPRC", "hit@k"]
    assert "projected for all 4 pairs" in out
    scores = pd.read_csv(tmp_path / "eval" / "scores.csv")
    assert scores["method"].tolist() == ["gradient"] and scores.loc[0, "n_sequences"] == 2
    assert "model-randomisation check" in out and "margin del. chosen" in out
    rand = pd.read_csv(tmp_path / "eval" / "randomisation.csv")
    assert rand["method"].tolist() == ["gradient"] and rand.loc[0, "n_sequences"] == 2
    assert rand.loc[0, "spearman_mean"] < 1


# ---------------------------------------------------------------------------------------------- randomisation


def test_randomised_copy_redraws_matrices_keeps_norms_and_leaves_the_model_alone(tiny):
    from tiviz.evaluation.sanity import randomised_copy

    model, _, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b, c = randomised_copy(model, seed=0), randomised_copy(model, seed=0), randomised_copy(model, seed=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the original is untouched
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])  # seeded
        if v.ndim >= 2:
            assert not torch.allclose(a.state_dict()[k], v) and not torch.allclose(a.state_dict()[k], c.state_dict()[k])
        else:
            assert torch.equal(a.state_dict()[k], v)  # norm gains kept


def test_randomisation_check_separates_gradient_methods_and_reports_every_method(tiny):
    from tiviz.evaluation.sanity import randomisation_check

    model, tok, pairs = tiny
    methods = ["gradient", "grad_x_input", "integrated_gradients", "attention", "tidpo", "occlusion"]
    check = randomisation_check(model, pairs, methods, tokenizer=tok, n_steps=4, ig_tolerance=0.0)
    s = check.summary.set_index("method")
    assert list(s.index) == methods
    assert (s["n_sequences"] == 2 * len(pairs)).all()
    for m in ("gradient", "grad_x_input", "integrated_gradients", "occlusion"):
        assert s.loc[m, "spearman_mean"] < 0.9, m  # the map changes when the weights do
    assert s["spearman_mean"].between(-1, 1).all() and s["share_above"].between(0, 1).all()
    per = check.per_sequence
    g = per[per["method"] == "gradient"]
    assert s.loc["gradient", "spearman_mean"] == pytest.approx(g["spearman"].mean())
    assert s.loc["gradient", "share_above"] == pytest.approx((g["spearman"] > 0.5).mean())
    assert "gradient" in check.to_text()
    # a table given is reused: only its methods are checked, and only the randomised copy is attributed
    table = attribute(model, pairs, ["gradient"], tokenizer=tok)
    again = randomisation_check(model, pairs, tokenizer=tok, table=table)
    assert again.summary["method"].tolist() == ["gradient"]
    assert again.summary.loc[0, "spearman_mean"] == pytest.approx(s.loc["gradient", "spearman_mean"], abs=1e-6)
