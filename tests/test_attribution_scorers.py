"""Attribution explains a scorer's score: the implicit reward through both models, a reward model's output, and
`token_score`, the exact per-token decomposition (with its pair-level split over aligned stretches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiviz.attribution import attribute
from tiviz.attribution.decomposition import margin_split, pair_terms
from tiviz.attribution.gradient import embed
from tiviz.errors import ConfigError, TableError
from tiviz.scoring import make_scorer, score_pairs
from tiviz.testing import tiny_model, tiny_reward_model
from tiviz.tokenization import collate, encode_pair, encode_reward_pair

GRADIENT_METHODS = ["gradient", "grad_x_input", "integrated_gradients"]


def response(df):
    return df[df["in_response"]]


@pytest.mark.parametrize("target", ["reward", "margin"])
def test_policy_equal_to_reference_gives_zero_reward_attributions(tok, pairs, target):
    same = attribute(tiny_model(seed=0), pairs[:2], [*GRADIENT_METHODS, "occlusion"], tokenizer=tok,
                     ref_model=tiny_model(seed=0),
                     target=target, n_steps=4, ig_tolerance=0)
    lp = attribute(tiny_model(seed=0), pairs[:2], ["gradient"], tokenizer=tok, target="logprob")
    assert lp["score"].abs().max() > 1.0  # the same model's log-likelihood does have a gradient
    assert same["score"].abs().max() < 1e-5
    assert same["target_value"].abs().max() < 1e-5


def test_reward_gradient_goes_through_both_models(tok, pairs):
    """d reward / d e = beta * (d log pi / d e - d log pi_ref / d e), each model differentiated on its own."""
    policy, ref = tiny_model(seed=0), tiny_model(seed=1)
    df = attribute(policy, pairs[:1], ["grad_x_input"], tokenizer=tok, ref_model=ref, target="reward", beta=0.5)
    seqs = encode_pair(tok, pairs[0])
    batch = collate(list(seqs), 2)
    emb = embed(policy, batch.input_ids).requires_grad_(True)
    scorer = make_scorer(policy, reference=ref, beta=0.5)
    lp_pol = scorer.policy_logps(batch, emb).sum()
    (g_pol,) = torch.autograd.grad(lp_pol, emb)
    emb2 = embed(ref, batch.input_ids).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(make_scorer(ref).policy_logps(batch, emb2).sum(), emb2)  # its own
    want = (0.5 * (g_pol - g_ref) * emb.detach()).sum(-1)  # (2, L) grad x input of the reward
    for b, side in enumerate(("chosen", "rejected")):
        got = df[df["side"] == side].sort_values("position")["score"].to_numpy()
        np.testing.assert_allclose(got, want[b, : len(seqs[b])].numpy(), atol=1e-5)


def test_reward_model_target_value_is_its_own_score(tok, pairs):
    rm = tiny_reward_model(seed=0)
    df = attribute(rm, pairs[:2], ["gradient", "token_score"], tokenizer=tok, target="reward")
    for pair in pairs[:2]:
        for side, seq in zip(("chosen", "rejected"), encode_reward_pair(tok, pair, max_length=512), strict=True):
            with torch.no_grad():
                own = float(rm(input_ids=torch.tensor([seq.input_ids])).logits[0, 0])
            rows = df[(df["pair_id"] == pair.id) & (df["side"] == side)]
            assert rows["target_value"].unique() == pytest.approx([own], abs=1e-5)
    assert response(df[df["method"] == "gradient"])["score"].abs().max() > 0
    assert df.attrs["tiviz"]["scorer"]["kind"] == "reward_model"


def test_integrated_gradients_are_complete_on_the_reward(tok, pairs):
    for model, ref in ((tiny_model(seed=0), tiny_model(seed=1)), (tiny_reward_model(seed=0), None)):
        df = attribute(model, pairs[:2], ["integrated_gradients"], tokenizer=tok, ref_model=ref, target="reward",
                       n_steps=32, ig_tolerance=0)
        per_seq = df.groupby(["pair_id", "side"]).agg(total=("score", "sum"), delta=("convergence_delta", "first"),
                                                      fx=("target_value", "first"))
        gap = (per_seq["total"] - per_seq["delta"]).abs()  # |f(x) - f(baseline)|
        assert (gap > 1e-4).all()
        assert (per_seq["delta"].abs() <= 0.05 * gap).all()


@pytest.mark.parametrize("kind", ["likelihood", "implicit_reward", "reward_model"])
def test_token_score_sums_to_the_scorers_score(tok, pairs, kind):
    model = tiny_reward_model(seed=0) if kind == "reward_model" else tiny_model(seed=0)
    scorer = make_scorer(model, reference=tiny_model(seed=1) if kind == "implicit_reward" else None, beta=0.3,
                         tokenizer=tok)
    df = attribute(scorer, pairs, ["token_score"], max_length=512)
    scores = score_pairs(scorer, pairs, max_length=512).set_index("pair_id")
    for (pid, side), g in df.groupby(["pair_id", "side"]):
        total = g["score"].sum()
        if kind == "reward_model":  # the score minus the prompt-only score
            prompt = g[~g["in_response"]].sort_values("position")["token_id"].tolist()
            with torch.no_grad():
                total += float(model(input_ids=torch.tensor([prompt])).logits[0, 0])
        assert total == pytest.approx(scores.loc[pid, side], abs=1e-5)
        assert g["target_value"].iloc[0] == pytest.approx(scores.loc[pid, side], abs=1e-5)
    assert df.attrs["tiviz"]["scorer"]["kind"] == kind


def test_implicit_reward_is_token_score_with_a_reference(tok, pairs):
    ref = tiny_model(seed=1)
    df = attribute(tiny_model(seed=0), pairs[:2], ["token_score", "implicit_reward"], tokenizer=tok, ref_model=ref)
    a = df[df["method"] == "token_score"]["score"].to_numpy()
    b = df[df["method"] == "implicit_reward"]["score"].to_numpy()
    np.testing.assert_allclose(a, b, atol=1e-7)
    assert np.abs(a).max() > 0


def test_margin_split_over_aligned_stretches(tok, pairs):
    scorer = make_scorer(tiny_model(seed=0), tokenizer=tok)
    df = attribute(scorer, pairs, ["token_score"])
    split = margin_split(df).set_index("pair_id")
    margins = score_pairs(scorer, pairs).set_index("pair_id")["margin"]
    np.testing.assert_allclose(split["margin"], margins.loc[split.index], atol=1e-4)
    np.testing.assert_allclose(split["from_differing"] + split["from_shared"], split["margin"], atol=1e-9)
    # "The capital of France is Paris." vs "... Rome.": one differing stretch; the shared prefix cancels exactly,
    # so the shared part is what the difference did to the tokens after it ("." and EOS)
    cap = split.loc["capital"]
    assert cap["n_differing_chosen"] >= 1 and cap["n_differing_rejected"] >= 1
    rows = df[(df["pair_id"] == "capital") & df["in_response"]]
    prefix = len("The capital of France is ")
    c = rows[rows["side"] == "chosen"]["score"].to_numpy()[:prefix]
    r = rows[rows["side"] == "rejected"]["score"].to_numpy()[:prefix]
    np.testing.assert_allclose(c, r, atol=1e-6)
    assert abs(cap["from_shared"]) > 0


@pytest.mark.parametrize("kind", ["likelihood", "implicit_reward", "reward_model"])
def test_token_score_pair_method_equals_the_pair_view_of_the_table(tok, pairs, kind):
    """`attribute(..., ["token_score_pair"])` is `pair_terms` of the token_score table, for every scorer kind."""
    model = tiny_reward_model(seed=0) if kind == "reward_model" else tiny_model(seed=0)
    ref = tiny_model(seed=1) if kind == "implicit_reward" else None
    scorer = make_scorer(model, tokenizer=tok, reference=ref)
    both = attribute(scorer, pairs, ["token_score", "token_score_pair"])
    direct = both[both["method"] == "token_score_pair"].reset_index(drop=True)
    view = pair_terms(both).reset_index(drop=True)
    assert len(direct) == len(view) and direct["in_response"].any()
    np.testing.assert_allclose(direct["score"], view["score"], atol=1e-6)
    np.testing.assert_allclose(direct["weight"].fillna(-1), view["weight"].fillna(-1), atol=1e-6)
    assert (direct["score"] != both[both["method"] == "token_score"]["score"].to_numpy()).any()


def test_pair_terms_sum_to_the_margin_and_cancel_the_shared_prefix(tok, pairs):
    scorer = make_scorer(tiny_model(seed=0), tokenizer=tok)
    df = attribute(scorer, pairs, ["token_score"])
    view = pair_terms(df)
    assert set(view["method"]) == {"token_score_pair"} and len(view) == len(df)
    resp = view[view["in_response"]]
    sums = resp.groupby(["pair_id", "side"])["score"].sum().unstack("side")
    margins = score_pairs(scorer, pairs).set_index("pair_id")["margin"]
    np.testing.assert_allclose(sums["chosen"] - sums["rejected"], margins.loc[sums.index], atol=1e-4)
    # the shared prefix of "capital" has the same terms on both sides: 0 in the pair view; the differing city
    # keeps its own term
    cap = resp[resp["pair_id"] == "capital"]
    prefix = len("The capital of France is ")
    assert np.abs(cap[cap["side"] == "chosen"]["score"].to_numpy()[:prefix]).max() < 1e-6
    own = df[(df["pair_id"] == "capital") & df["in_response"] & (df["side"] == "chosen")]["score"].to_numpy()
    mine = cap[cap["side"] == "chosen"]["score"].to_numpy()
    differing = ~np.isclose(mine, 0, atol=1e-6)
    assert differing.any() and np.allclose(mine[differing][0], own[differing][0])
    # the weights follow the new values (what rankings and shading read), not token_score's
    w = resp["weight"].to_numpy()
    np.testing.assert_allclose(resp.groupby(["pair_id", "side"])["weight"].sum(), 1.0, atol=1e-9)
    np.testing.assert_allclose(w, (resp["score"].abs() / resp.groupby(["pair_id", "side"])["score"]
                                   .transform(lambda x: x.abs().sum())).to_numpy(), atol=1e-12)
    with pytest.raises(TableError):
        pair_terms(df, method="gradient")


def test_scorer_and_quantities_are_recorded(tok, pairs):
    df = attribute(tiny_model(seed=0), pairs[:1], ["gradient", "token_score", "attention"], tokenizer=tok,
                   ref_model=tiny_model(seed=1), target="reward", beta=0.2)
    prov = df.attrs["tiviz"]
    assert prov["scorer"]["kind"] == "implicit_reward" and prov["scorer"]["beta"] == 0.2
    assert "pi_ref" in prov["method_quantities"]["gradient"]
    assert "term" in prov["method_quantities"]["token_score"]


def test_reward_model_refuses_what_it_cannot_explain(tok, pairs):
    rm = tiny_reward_model(seed=0)
    with pytest.raises(ConfigError, match="target"):
        attribute(rm, pairs[:1], ["gradient"], tokenizer=tok, target="logprob")
    with pytest.raises(ConfigError, match="tidpo"):
        attribute(rm, pairs[:1], ["tidpo"], tokenizer=tok, target="reward")


def test_cli_explains_a_reward_model_folder_and_a_reference(tmp_path, tok):
    """`--model RM_FOLDER` explains the reward model's score; `--ref-model` the implicit reward (target reward
    by default); never a causal LM with a random head."""
    import json

    from tiviz.cli import main
    from tiviz.models import save_model
    from tiviz.table import read_table
    from tiviz.testing import save_tiny_reward_model, tiny_pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in tiny_pairs()[:2]) + "\n", encoding="utf-8")
    rm = save_tiny_reward_model(tmp_path / "rm", seed=2)
    out = tmp_path / "rm.parquet"
    assert main(["attribute", "--pairs", str(data), "--model", str(rm), "--methods", "gradient,token_score",
                 "--out", str(out), "--no-cache", "--device", "cpu"]) == 0
    df = read_table(out)
    assert df.attrs["tiviz"]["scorer"]["kind"] == "reward_model" and df.attrs["tiviz"]["target"] == "reward"
    want = score_pairs(make_scorer(tiny_reward_model(seed=2), tokenizer=tok), tiny_pairs()[:2])
    got = df.groupby(["pair_id", "side"])["target_value"].first().unstack("side").loc[want["pair_id"]]
    np.testing.assert_allclose(got["chosen"], want["chosen"], atol=1e-5)
    lm = save_model(tiny_model(seed=0), tmp_path / "lm", tokenizer=tok)
    out = tmp_path / "same.parquet"
    assert main(["attribute", "--pairs", str(data), "--model", str(lm), "--ref-model", str(lm), "--methods",
                 "gradient", "--out", str(out), "--no-cache", "--device", "cpu", "--beta", "0.3"]) == 0
    df = read_table(out)
    assert df.attrs["tiviz"]["scorer"]["beta"] == 0.3 and df.attrs["tiviz"]["target"] == "reward"
    assert df["score"].abs().max() < 1e-5  # the same model as its own reference: no reward to explain


def test_policy_and_reference_must_share_embeddings(tok, pairs):
    from tiviz.errors import ModelError

    scorer = make_scorer(tiny_model(seed=0), reference=tiny_model(seed=0, hidden_size=16), tokenizer=tok)
    with pytest.raises(ModelError, match="cannot share input embeddings"):
        score_pairs(scorer, pairs[:1])


def test_occlusion_explains_the_scorer(tok, pairs):
    same = attribute(tiny_model(seed=0), pairs[:1], ["occlusion"], tokenizer=tok, ref_model=tiny_model(seed=0),
                     target="reward")
    assert same["score"].abs().max() < 1e-5
    rm = tiny_reward_model(seed=0)
    df = attribute(rm, pairs[:1], ["occlusion"], tokenizer=tok, target="reward")
    want = score_pairs(make_scorer(rm, tokenizer=tok), pairs[:1], max_length=512).iloc[0]
    got = df.groupby("side")["target_value"].first()
    assert got["chosen"] == pytest.approx(want["chosen"], abs=1e-5)
    assert response(df)["score"].abs().max() > 0
