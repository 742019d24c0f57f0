"""Occlusion (leave-one-out): the cached fast path equals one full forward per occluded token, each score is
f(x) - f(x with the token's id swapped for the pad token) computed from scratch, the implicit reward is 0 when the
policy is its own reference, and only response tokens are scored."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tiviz.attribution import attribute
from tiviz.attribution.occlusion import Term, occlusion, occlusion_for_target, scorer_occlusion, target_terms
from tiviz.attribution.targets import sequence_logp
from tiviz.data import load_pairs
from tiviz.evaluation import reference_embedding
from tiviz.scoring import make_scorer
from tiviz.testing import tiny_model, tiny_pairs, tiny_reward_model, tiny_tokenizer
from tiviz.tokenization import collate, encode_pair


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    pairs = load_pairs(tiny_pairs())
    seqs = [s for p in pairs for s in encode_pair(tok, p)]
    return tiny_model(seed=0), tok, pairs, seqs, collate(seqs, tok.pad_token_id, "left")


def _sign(B: int) -> torch.Tensor:
    return torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(B)])


@pytest.mark.parametrize("target", ["logprob", "max_logit", "margin", "reward"])
def test_fast_path_equals_one_forward_per_token(tiny, target):
    model, tok, _, _, batch = tiny
    ref = tiny_model(seed=1) if target == "reward" else None
    kw = {"ref_model": ref, "beta": 0.5}
    fast, fx = occlusion_for_target(model, tok, batch, target, _sign(batch.input_ids.shape[0]), **kw)
    slow, fx_slow = occlusion_for_target(model, tok, batch, target, _sign(batch.input_ids.shape[0]), naive=True,
                                         **kw)
    assert fast.abs().max() > 1e-4  # occluding does move the target
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(fx, fx_slow, atol=1e-5, rtol=0)


def test_fast_path_equals_naive_in_small_chunks(tiny):
    """Chunks that cut the prefix at many different lengths (a tiny forward budget) give the same scores."""
    model, tok, _, _, batch = tiny
    terms = target_terms(model, None, "logprob", 0.1)
    ref = reference_embedding(model, tok)
    a, _ = occlusion(terms, batch, ref, tokens_per_forward=16)
    b, _ = occlusion(terms, batch, ref, naive=True, tokens_per_forward=4096)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_reward_model_head_fast_equals_naive_and_value_is_the_model_score(tiny):
    _, tok, _, seqs, _ = tiny
    rm = tiny_reward_model()
    batch = collate(seqs, tok.pad_token_id, "right")
    ref = reference_embedding(rm, tok)
    fast, fx = occlusion([Term(rm, 1.0, "reward_head")], batch, ref)
    slow, _ = occlusion([Term(rm, 1.0, "reward_head")], batch, ref, naive=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert fast.abs().max() > 1e-4
    with torch.no_grad():  # one row at a time: the head reads the last token, as the model's own pooling does
        want = [float(rm(input_ids=torch.tensor([s.input_ids])).logits[0, 0]) for s in seqs]
    np.testing.assert_allclose(fx.numpy(), want, atol=1e-5)


def _scorer(kind, tok):
    if kind == "likelihood":
        return make_scorer(tiny_model(seed=0), tokenizer=tok)
    if kind == "implicit_reward":
        return make_scorer(tiny_model(seed=0), reference=tiny_model(seed=1), beta=0.5, tokenizer=tok)
    if kind == "adapter_reference":
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(tiny_model(seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                               init_lora_weights=False))
        return make_scorer(policy, adapter_reference=True, beta=0.5, tokenizer=tok)
    return make_scorer(tiny_reward_model(seed=0), tokenizer=tok)


@pytest.mark.parametrize("kind", ["likelihood", "implicit_reward", "adapter_reference", "reward_model"])
def test_every_scorer_fast_equals_naive_and_values_are_its_scores(tiny, kind):
    _, tok, _, seqs, _ = tiny
    scorer = _scorer(kind, tok)
    batch = collate(seqs, tok.pad_token_id, "right")
    fast, fx = scorer_occlusion(scorer, batch)
    slow, _ = scorer_occlusion(scorer, batch, naive=True)
    assert fast.abs().max() > 1e-4
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    with torch.no_grad():
        want = scorer.sequence_scores(batch).double()
    torch.testing.assert_close(fx, want, atol=1e-5, rtol=0)
    assert (fast[~batch.response_mask] == 0).all()  # prompt and padding: no score


def test_scorer_with_policy_as_its_own_reference_gives_zero(tiny):
    _, tok, _, seqs, _ = tiny
    same = make_scorer(tiny_model(seed=0), reference=tiny_model(seed=0), tokenizer=tok)
    scores, values = scorer_occlusion(same, collate(seqs, tok.pad_token_id))
    assert scores.abs().max() < 1e-6 and values.abs().max() < 1e-6


def test_each_score_is_the_change_when_the_token_becomes_the_pad_token(tiny):
    """Removal by the pad embedding is the pad token itself: recompute f(x) - f(x_i -> pad) from scratch."""
    model, tok, pairs, _, _ = tiny
    seq = encode_pair(tok, pairs[1])[0]
    batch = collate([seq], tok.pad_token_id)
    scores, fx = occlusion_for_target(model, tok, batch, "logprob", torch.ones(1))
    ids = torch.tensor([seq.input_ids])
    mask = batch.response_mask
    with torch.no_grad():
        full = float(sequence_logp(model(input_ids=ids).logits, ids, mask))
        for i in (seq.response_start, seq.response_start + 3, len(seq) - 2):
            swapped = ids.clone()
            swapped[0, i] = tok.pad_token_id
            occluded = float(sequence_logp(model(input_ids=swapped).logits, ids, mask))  # labels stay the originals
            assert float(scores[0, i]) == pytest.approx(full - occluded, abs=1e-4)
    assert float(fx[0]) == pytest.approx(full, abs=1e-4)
    # the last token is context for nothing: occluding it cannot change a log-likelihood
    assert float(scores[0, len(seq) - 1]) == 0.0


def test_policy_equal_to_reference_gives_zero(tiny):
    model, tok, _, _, batch = tiny
    scores, values = occlusion_for_target(model, tok, batch, "reward", _sign(batch.input_ids.shape[0]),
                                          ref_model=model)
    assert scores.abs().max() < 1e-6 and values.abs().max() < 1e-6
    alone, _ = occlusion_for_target(model, tok, batch, "logprob", _sign(batch.input_ids.shape[0]))
    assert alone.abs().max() > 1e-3  # the policy's own term is not zero: the reference term cancels it


def test_attribute_reports_response_tokens_only(tiny, tmp_path):
    model, tok, pairs, _, _ = tiny
    df = attribute(model, pairs[:2], ["occlusion", "gradient"], tokenizer=tok)
    occ = df[df["method"] == "occlusion"]
    assert len(occ) == len(df[df["method"] == "gradient"])
    prompt = occ[~occ["in_response"]]
    assert len(prompt) and (prompt["score"] == 0).all() and prompt["weight"].isna().all()
    resp = occ[occ["in_response"]]
    assert resp["weight"].notna().all() and (resp["score"].abs() > 0).any()
    assert df.attrs["tiviz"]["method_targets"]["occlusion"] == "logprob"
    # target_value is f(x): the response log-likelihood
    seq = encode_pair(tok, pairs[0])[0]
    ids = torch.tensor([seq.input_ids])
    with torch.no_grad():
        lp = float(sequence_logp(model(input_ids=ids).logits, ids, collate([seq], tok.pad_token_id).response_mask))
    got = occ[(occ["pair_id"] == pairs[0].id) & (occ["side"] == "chosen")]["target_value"].iloc[0]
    assert got == pytest.approx(lp, abs=1e-4)


def test_removal_setting_is_in_the_cache_key(tiny, tmp_path):
    model, tok, pairs, _, _ = tiny
    a = attribute(model, pairs[:1], "occlusion", tokenizer=tok, cache=tmp_path)
    b = attribute(model, pairs[:1], "occlusion", tokenizer=tok, cache=tmp_path, occlusion_removal="zero")
    c = attribute(model, pairs[:1], "occlusion", tokenizer=tok, cache=tmp_path)
    assert b.attrs["tiviz"]["cache"]["reused"] == 0  # a new removal is computed, not read back
    assert c.attrs["tiviz"]["cache"]["reused"] == 1
    assert not np.allclose(a["score"], b["score"])
    np.testing.assert_array_equal(a["score"], c["score"])


@pytest.mark.parametrize("kind", ["likelihood", "implicit_reward", "reward_model"])
def test_fast_path_is_exact_in_float64(tiny, kind):
    """In float64 (RMSNorm included) the cached path equals the naive one to rounding (1e-12): the prefix cache,
    positions and masks are those of the full forward; the value is the scorer's float64 score. In float32 both paths carry the model's own rounding, which
    on the default model is larger than their difference (docs/BENCHMARKS.md, occlusion precision)."""
    from tiviz.testing import float64_copy

    _, tok, _, seqs, _ = tiny
    scorer = _scorer(kind, tok)
    ref = None if scorer.reference is None else float64_copy(scorer.reference)
    scorer = dataclasses.replace(scorer, model=float64_copy(scorer.model), reference=ref)
    batch = collate(seqs, tok.pad_token_id, "right")
    fast, fx = scorer_occlusion(scorer, batch)
    slow, fx_slow = scorer_occlusion(scorer, batch, naive=True)
    assert fast.abs().max() > 1e-4
    torch.testing.assert_close(fast, slow, atol=1e-12, rtol=0)
    torch.testing.assert_close(fx, fx_slow, atol=1e-12, rtol=0)
    with torch.no_grad():  # and the readout stays float64 (no float32 log-softmax on the way)
        torch.testing.assert_close(fx, scorer.sequence_scores(batch).double(), atol=1e-12, rtol=0)
