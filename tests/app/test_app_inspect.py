"""Inspect page: a pair shaded token by token under the chosen method, its preference scores and top tokens,
checked against the library on the tiny model."""

from __future__ import annotations

import html

import pytest
from apptools import FALLBACK_METHOD, hand_logps, html_bodies, token_blocks

from tiviz.data import load_pairs


def test_first_run_shows_the_first_sample_pair(new_app):
    at = new_app()
    pair = load_pairs("sample_data/train.jsonl")[0]
    assert at.selectbox(key="dataset").value == "sample: train"
    assert at.selectbox(key="pair").value == pair.id
    blocks = token_blocks(at)
    assert blocks[("chosen", FALLBACK_METHOD)] == pair.chosen
    assert blocks[("rejected", FALLBACK_METHOD)] == pair.rejected
    assert any(pair.prompt in html.unescape(b) for b in html_bodies(at))  # the prompt is shown


def test_choose_pair_and_method(new_app):
    at = new_app()
    at.selectbox(key="pair").set_value("fact-001").run()
    at.selectbox(key="inspect_method").set_value("grad_x_input").run()
    assert not at.exception
    pair = load_pairs("sample_data/train.jsonl")[2]
    assert pair.id == "fact-001"
    assert token_blocks(at)[("chosen", "grad_x_input")] == pair.chosen
    legend = [b for b in html_bodies(at) if '<div class="tiviz-legend">' in b]
    assert legend and "signed" in legend[0]  # grad_x_input is signed: diverging scale
    at.radio(key="inspect_value").set_value("weight").run()
    assert "non-negative" in next(b for b in html_bodies(at) if '<div class="tiviz-legend">' in b)


def test_preference_scores_match_the_model(new_app, tok):
    from tiviz.testing import tiny_model

    at = new_app()
    pair = load_pairs("sample_data/train.jsonl")[0]
    lc, lr = hand_logps(tiny_model(seed=0), tok, pair)
    shown = {m.label: m.value for m in at.metric}
    assert shown["log π(chosen | x)"] == f"{lc:.2f}"
    assert shown["log π(rejected | x)"] == f"{lr:.2f}"
    assert shown["log-prob margin"] == f"{lc - lr:+.2f}"
    assert not any("implicit reward" in k for k in shown)  # no reference for the base model


def test_run_as_model_gives_implicit_rewards(new_app, finished_run, tok):
    from tiviz.testing import tiny_model

    at = new_app()
    at.selectbox(key="inspect_model").set_value("trained").run()
    assert not at.exception
    pair = load_pairs("sample_data/train.jsonl")[0]
    pc, pr = hand_logps(tiny_model(seed=1), tok, pair)
    bc, br = hand_logps(tiny_model(seed=0), tok, pair)
    shown = {m.label: m.value for m in at.metric}
    assert shown["implicit reward (chosen)"] == f"{0.1 * (pc - bc):+.3f}"
    assert shown["reward margin"] == f"{0.1 * ((pc - bc) - (pr - br)):+.3f}"
    at.selectbox(key="inspect_method").set_value("implicit_reward").run()
    assert token_blocks(at)[("chosen", "implicit_reward")] == pair.chosen


def test_top_k_table_is_sorted_and_sized(new_app):
    at = new_app()
    top = at.dataframe[0].value
    assert sorted(top["side"].unique()) == ["chosen", "rejected"]
    for _, g in top.groupby("side"):
        assert len(g) == 10
        assert g["rank"].tolist() == list(range(1, 11))
        assert g["weight"].is_monotonic_decreasing
    at.slider(key="inspect_top_k").set_value(3).run()
    assert len(at.dataframe[0].value) == 6


@pytest.mark.parametrize("dataset", ["sample: test", "sample: conversational"])
def test_other_samples(new_app, dataset):
    at = new_app()
    at.selectbox(key="dataset").set_value(dataset).run()
    assert not at.exception
    name = {"sample: test": "test", "sample: conversational": "conversational"}[dataset]
    pair = load_pairs(f"sample_data/{name}.jsonl")[0]
    assert at.selectbox(key="pair").value == pair.id
    assert token_blocks(at)[("chosen", FALLBACK_METHOD)] == pair.response_text("chosen")


def test_word_toggle_diff_view_and_hidden_template(new_app):
    import re

    at = new_app()
    pair = load_pairs("sample_data/train.jsonl")[0]
    diff = [b for b in html_bodies(at) if "<div class=\"tiviz-diff\"" in b]
    assert len(diff) == 1 and "diff-same" in diff[0] and "diff-differ" in diff[0]

    def spans(body):
        return re.findall(r'<span class="tok[^"]*" style="[^"]*" data-tip="[^"]*">', body)

    chosen_tokens = next(b for b in html_bodies(at) if "Chosen response" in b)
    n_tokens = len(spans(chosen_tokens))
    at.toggle(key="inspect_words").set_value(True).run()
    assert not at.exception
    assert token_blocks(at)[("chosen", FALLBACK_METHOD)] == pair.chosen  # same text, fewer cells
    n_words = len(spans(next(b for b in html_bodies(at) if "Chosen response" in b)))
    assert n_words < n_tokens
    assert 'class="tok tok-special"' in next(b for b in html_bodies(at) if "Chosen response" in b)  # EOS shown
    at.toggle(key="inspect_hide_template").set_value(True).run()
    assert not at.exception
    body = next(b for b in html_bodies(at) if "Chosen response" in b)
    assert 'class="tok tok-special"' not in body and token_blocks(at)[("chosen", FALLBACK_METHOD)] == pair.chosen
