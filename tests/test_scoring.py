"""Scorers on the tiny models: each kind's score against a hand computation, batching, the PEFT reference,
reward-model folders, and checkpoints that would load only in part."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tiviz.errors import ModelError
from tiviz.models import load_model, load_reward_model, save_model
from tiviz.scoring import load_scorer, make_scorer, margin_summary, score_pairs
from tiviz.testing import save_tiny_reward_model, tiny_model, tiny_reward_model
from tiviz.tokenization import collate, encode_pair


def single_forward_logp(model, seq) -> float:
    """log pi(y | x) of one unpadded sequence from the full logits of a plain forward (the hand loop)."""
    ids = torch.tensor([seq.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)  # (L, V), float32 as the model
    return sum(float(logp[t - 1, seq.input_ids[t]]) for t in range(max(seq.response_start, 1), len(seq)))


def single_forward_reward(model, seq) -> float:
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([seq.input_ids])).logits[0, 0])


def scorers(tok):
    return {
        "likelihood": make_scorer(tiny_model(seed=0), tokenizer=tok),
        "implicit_reward": make_scorer(tiny_model(seed=0), reference=tiny_model(seed=1), beta=0.5, tokenizer=tok),
        "reward_model": make_scorer(tiny_reward_model(seed=0), tokenizer=tok),
    }


def test_policy_equal_to_reference_gives_zero_reward(tok, pairs):
    scorer = make_scorer(tiny_model(seed=0), reference=tiny_model(seed=0), tokenizer=tok)
    table = score_pairs(scorer, pairs)
    assert scorer.kind == "implicit_reward"
    assert np.abs(table[["chosen", "rejected", "margin"]].to_numpy()).max() < 1e-6
    batch = collate([s for p in pairs for s in encode_pair(tok, p)], 2)
    assert scorer.token_scores(batch).abs().max() < 1e-6


@pytest.mark.parametrize("kind", ["likelihood", "implicit_reward", "reward_model"])
def test_score_pairs_matches_single_forwards(tok, pairs, kind):
    scorer = scorers(tok)[kind]
    table = score_pairs(scorer, pairs, batch_size=4)
    assert list(table["pair_id"]) == [p.id for p in pairs]
    for p, (_, row) in zip(pairs, table.iterrows(), strict=True):
        for side, seq in zip(("chosen", "rejected"), scorer.encode_pair(p), strict=True):  # as the scorer reads it
            if kind == "likelihood":
                want = single_forward_logp(scorer.model, seq)
            elif kind == "implicit_reward":
                want = 0.5 * (single_forward_logp(scorer.model, seq) - single_forward_logp(scorer.reference, seq))
            else:  # the reward model's own output for that text
                want = single_forward_reward(scorer.model, seq)
            assert row[side] == pytest.approx(want, abs=1e-5)
        assert row["margin"] == pytest.approx(row["chosen"] - row["rejected"], abs=1e-9)
    assert table.attrs["tiviz"]["kind"] == kind


@pytest.mark.parametrize("kind", ["likelihood", "implicit_reward", "reward_model"])
def test_batched_equals_unbatched(tok, pairs, kind):
    scorer = scorers(tok)[kind]
    one = score_pairs(scorer, pairs, batch_size=1)
    many = score_pairs(scorer, pairs, batch_size=8)
    assert np.allclose(one[["chosen", "rejected"]], many[["chosen", "rejected"]], atol=1e-5)
    assert one["chosen"].std() > 1e-3  # the pairs do score differently


@pytest.mark.parametrize("kind", ["likelihood", "implicit_reward", "reward_model"])
def test_token_scores_sum_to_the_score(tok, pairs, kind):
    scorer = scorers(tok)[kind]
    seqs = [s for p in pairs for s in scorer.encode_pair(p)]
    batch = collate(seqs, 2)
    terms = scorer.token_scores(batch)  # (B, L)
    with torch.no_grad():
        total = scorer.sequence_scores(batch).double()
    if kind == "reward_model":  # the score minus the prompt-only score
        prompt_only = torch.tensor([single_forward_reward(scorer.model, _prompt(s)) for s in seqs], dtype=torch.float64)
        total = total - prompt_only
    assert torch.allclose(terms.double().sum(-1), total, atol=1e-5)
    assert (terms[~batch.response_mask] == 0).all()


def _prompt(seq):
    from dataclasses import replace

    return replace(seq, input_ids=seq.input_ids[: seq.response_start])


def test_peft_adapter_reference_equals_a_copy_of_the_base(tok, pairs):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(seed=0)
    policy = get_peft_model(tiny_model(seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    adapter = score_pairs(make_scorer(policy, adapter_reference=True, tokenizer=tok), pairs)
    copy = score_pairs(make_scorer(policy, reference=base, tokenizer=tok), pairs)
    assert np.allclose(adapter[["chosen", "rejected"]], copy[["chosen", "rejected"]], atol=1e-6)
    assert adapter["chosen"].abs().max() > 1e-4  # the adapter does change the model


def test_encoded_pairs_give_the_trainers_held_out_numbers(tok, pairs):
    """What the trainer's held-out evaluation reports: margin = beta * (sum lr_w - sum lr_l), ties count as wrong
    (computed here from one padded forward of each model)."""
    import torch

    from tiviz.attribution.targets import sequence_logp
    from tiviz.training.data import encode_pairs, pair_rows

    policy, ref = tiny_model(seed=0), tiny_model(seed=1)
    encoded = encode_pairs(tok, pairs, max_length=64, max_prompt_length=32)
    table = score_pairs(make_scorer(policy, reference=ref, beta=0.1), encoded, batch_size=2)
    b = pair_rows(encoded, 2)
    with torch.no_grad():
        r = [sequence_logp(m(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
                           .logits, b.input_ids, b.response_mask) for m in (policy, ref)]
    n = len(encoded)
    margins = 0.1 * ((r[0] - r[1])[:n] - (r[0] - r[1])[n:])  # (n,)
    got = margin_summary(table["margin"])
    assert got["accuracy"] == pytest.approx(float((margins > 0).float().mean()))
    assert got["mean_margin"] == pytest.approx(float(margins.mean()), abs=1e-6)
    assert got["n_pairs"] == n


def test_margin_summary_counts_ties_as_wrong():
    s = margin_summary([1.0, 0.0, -2.0, 3.0, float("nan")])
    assert s == {"accuracy": 0.5, "mean_margin": 0.5, "n_pairs": 4.0}


def test_scorer_records_its_provenance(tok):
    prov = make_scorer(tiny_model(seed=0), reference=tiny_model(seed=1), beta=0.2, tokenizer=tok).provenance()
    assert prov["kind"] == "implicit_reward" and prov["beta"] == 0.2 and "pi_ref" in prov["quantity"]


def test_reward_model_folder_loads_as_a_reward_model(tmp_path, tok, pairs):
    folder = save_tiny_reward_model(tmp_path / "rm", seed=3)
    scorer = load_scorer(str(folder), device="cpu")
    assert scorer.kind == "reward_model"
    got = score_pairs(scorer, pairs[:2])
    want = score_pairs(make_scorer(tiny_reward_model(seed=3), tokenizer=tok), pairs[:2])
    assert np.allclose(got[["chosen", "rejected"]], want[["chosen", "rejected"]], atol=1e-6)
    with pytest.raises(ModelError, match="reward model"):  # never as a causal LM with a new random head
        load_model(str(folder), device="cpu")


def test_reward_model_with_several_outputs_is_refused(tmp_path):
    folder = save_tiny_reward_model(tmp_path / "rm")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b"}
    config["label2id"] = {"a": 0, "b": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="num_labels is 2"):
        load_reward_model(str(folder), device="cpu")


def _drop_tensor(folder, name):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    assert name in tensors
    del tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})


def test_partly_loaded_checkpoints_are_refused(tmp_path, tok):
    lm = save_model(tiny_model(), tmp_path / "lm", tokenizer=tok)
    _drop_tensor(lm, "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ModelError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(str(lm), device="cpu")
    rm = save_tiny_reward_model(tmp_path / "rm")
    _drop_tensor(rm, "score.weight")
    with pytest.raises(ModelError, match=r"missing.*score\.weight"):
        load_scorer(str(rm), device="cpu")


def test_unexpected_parameters_are_refused(tmp_path, tok):
    lm = save_model(tiny_model(), tmp_path / "lm", tokenizer=tok)
    tensors = load_file(lm / "model.safetensors")
    tensors["model.extra_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, lm / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"not in the model.*extra_head"):
        load_model(str(lm), device="cpu")


def test_a_run_folder_scores_its_final_model_against_its_base(tmp_path, tok, pairs):
    base = save_model(tiny_model(seed=0), tmp_path / "base", tokenizer=tok)
    run = tmp_path / "run"
    save_model(tiny_model(seed=1), run / "final", tokenizer=tok)
    (run / "config.json").write_text(json.dumps({"model": str(base), "tidpo": {}}))
    scorer = load_scorer(str(run), beta=0.2, device="cpu")
    assert scorer.kind == "implicit_reward" and scorer.provenance()["reference_id"] == str(base)
    got = score_pairs(scorer, pairs[:2])
    want = score_pairs(make_scorer(tiny_model(seed=1), reference=tiny_model(seed=0), beta=0.2, tokenizer=tok),
                       pairs[:2])
    assert np.allclose(got["margin"], want["margin"], atol=1e-6)
