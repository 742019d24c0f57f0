"""Inspect explains a scorer: the base model's likelihood, a run's implicit reward, or a reward-model folder; it
shows the scorer's margin and which side wins, checked against `tiviz.scoring.score_pairs` on the tiny models."""

from __future__ import annotations

from apptools import token_blocks

from tiviz.data import load_pairs


def shown_metrics(at):
    return {m.label: m.value for m in at.metric}


def test_inspect_shows_the_scorers_margin_and_winner(new_app, tok):
    from tiviz.scoring import make_scorer, score_pairs
    from tiviz.testing import tiny_model

    at = new_app()
    pair = load_pairs("sample_data/train.jsonl")[0]
    want = score_pairs(make_scorer(tiny_model(seed=0), tokenizer=tok), [pair], max_length=512).iloc[0]
    shown = shown_metrics(at)
    assert shown["scorer margin"] == f"{want['margin']:+.3f}"
    side = "chosen" if want["margin"] > 0 else "rejected"
    assert any(f"prefers **the {side} response**" in m.value for m in at.markdown)
    assert "tidpo (TI-DPO's training weights)" in at.selectbox(key="inspect_method").options


def test_a_reward_model_folder_is_a_scorer(new_app, app_env, tok):
    from tiviz.scoring import make_scorer, score_pairs
    from tiviz.testing import save_tiny_reward_model, tiny_reward_model

    save_tiny_reward_model(app_env / "my-rm", seed=4)
    at = new_app()
    picker = at.selectbox(key="inspect_model")
    assert "reward model: my-rm" in picker.options
    picker.set_value("rm:my-rm").run()
    assert not at.exception, [e.value for e in at.exception]
    methods = at.selectbox(key="inspect_method")
    assert not any(o.startswith(("tidpo", "implicit_reward")) for o in methods.options)
    pair = load_pairs("sample_data/train.jsonl")[0]
    want = score_pairs(make_scorer(tiny_reward_model(seed=4), tokenizer=tok), [pair], max_length=512).iloc[0]
    shown = shown_metrics(at)
    assert shown["score (chosen)"] == f"{want['chosen']:+.3f}"
    assert shown["scorer margin"] == f"{want['margin']:+.3f}"
    assert "log π(chosen | x)" not in shown  # a reward model has no likelihood
    methods.set_value("token_score").run()
    assert not at.exception, [e.value for e in at.exception]
    assert token_blocks(at)[("chosen", "token_score")] == pair.chosen
