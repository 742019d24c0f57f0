"""Word-level tables (`tiviz.aggregate`): a known word merges, scores sums are preserved, spans stay contiguous,
response weights sum to 1, and template tokens are marked without changing any score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tiviz.aggregate import aggregate_words, template_tokens
from tiviz.attribution import attribute
from tiviz.data import load_pairs
from tiviz.errors import ConfigError
from tiviz.table import PROVENANCE_KEY, provenance, validate
from tiviz.testing import SPECIAL_TOKENS, tiny_model, tiny_pairs, tiny_tokenizer

CONVERSATIONAL = {"id": "cm", "prompt": [{"role": "user", "content": "How long is it?"}],
                  "chosen": [{"role": "assistant", "content": "One centimetre, café."}],
                  "rejected": [{"role": "assistant", "content": "A mile."}]}


def _hand_table() -> pd.DataFrame:
    """The response ' One centimetre.' tokenised as a subword tokenizer would: Ġ One | Ġcent | imet | re | ."""
    pieces = [("<|im_start|>", "<|im_start|>", False), ("ĠOne", " One", True), ("Ġcent", " cent", True),
              ("imet", "imet", True), ("re", "re", True), (".", ".", True), ("<|im_end|>", "", True)]
    rows, prompt_at, resp_at = [], 0, 0
    scores = [0.5, 1.0, 2.0, -3.0, 4.0, 0.5, 0.0]
    for pos, ((token, text, in_resp), score) in enumerate(zip(pieces, scores, strict=True)):
        start = resp_at if in_resp else prompt_at
        end = start + len(text)
        if in_resp:
            resp_at = end
        else:
            prompt_at = end
        rows.append({"pair_id": "p", "side": "chosen", "position": pos, "token_id": 100 + pos, "token": token,
                     "text": text, "char_start": start, "char_end": end, "in_response": in_resp,
                     "method": "grad_x_input", "score": score, "weight": np.nan, "target_value": 1.5,
                     "convergence_delta": np.nan})
    df = pd.DataFrame(rows)
    resp = df["in_response"]
    df.loc[resp, "weight"] = df.loc[resp, "score"].abs() / df.loc[resp, "score"].abs().sum()
    df = validate(df)
    df.attrs[PROVENANCE_KEY] = {"model": {"id": "hand"}}
    return df


def test_a_known_word_merges_into_one_row():
    words = aggregate_words(_hand_table())
    assert list(words["text"]) == ["<|im_start|>", " One", " centimetre", ".", ""]
    cm = words[words["text"] == " centimetre"].iloc[0]
    assert cm["token"] == "Ġcentimetre" and cm["token_id"] == 102 and cm["position"] == 2
    assert cm["score"] == pytest.approx(2.0 - 3.0 + 4.0)
    assert (cm["char_start"], cm["char_end"]) == (4, 15)
    assert cm["weight"] == pytest.approx((2 + 3 + 4) / 10.5)
    assert provenance(words)["aggregate"]["level"] == "word"
    assert provenance(words)["model"] == {"id": "hand"}


@pytest.fixture(scope="module")
def table():
    pairs = load_pairs([*tiny_pairs(), CONVERSATIONAL])
    return attribute(tiny_model(), pairs, "gradient,grad_x_input,attention", tokenizer=tiny_tokenizer()), pairs


def test_sums_spans_and_weights_on_a_real_table(table):
    df, _ = table
    words = aggregate_words(df)
    assert len(words) < len(df)
    keys = ["pair_id", "side", "method", "in_response"]
    np.testing.assert_allclose(words.groupby(keys)["score"].sum(), df.groupby(keys)["score"].sum(), rtol=1e-9)
    resp = words[words["in_response"]]
    np.testing.assert_allclose(resp.groupby(["pair_id", "side", "method"])["weight"].sum(), 1.0, rtol=1e-9)
    assert words.loc[~words["in_response"], "weight"].isna().all()
    for _, seq in words.groupby(keys):
        seq = seq.sort_values("position")
        assert (seq["char_start"].to_numpy()[1:] == seq["char_end"].to_numpy()[:-1]).all()  # contiguous
    # the byte-level tiny tokenizer splits every byte: the words come back whole, the space joined to them
    chosen = words[(words.pair_id == "cm") & (words.side == "chosen") & (words.method == "gradient")
                   & words.in_response]
    assert list(chosen["text"]) == ["One", " centimetre", ",", " café", ".", ""]
    assert aggregate_words(words) is words  # already word-level


def test_attribute_aggregate_flag_matches_the_function(table):
    df, pairs = table
    words = attribute(tiny_model(), pairs[:1], "gradient", tokenizer=tiny_tokenizer(), aggregate="word")
    expected = aggregate_words(df[(df.pair_id == pairs[0].id) & (df.method == "gradient")])
    pd.testing.assert_frame_equal(words.reset_index(drop=True)[expected.columns],
                                  expected.reset_index(drop=True), check_exact=False)
    with pytest.raises(ConfigError, match="aggregate"):
        attribute(tiny_model(), pairs[:1], "gradient", tokenizer=tiny_tokenizer(), aggregate="sentence")


def test_template_tokens_are_marked_and_scores_untouched(table):
    df, pairs = table
    before = df["score"].copy()
    by_piece = template_tokens(df)
    assert set(df.loc[by_piece, "token"]) <= set(SPECIAL_TOKENS) and by_piece.any()
    by_id = template_tokens(df, special_ids=tiny_tokenizer().all_special_ids)
    assert (by_id == by_piece).all()
    marked = template_tokens(df, pairs)
    cm = df[(df.pair_id == "cm") & (df.side == "chosen") & (df.method == "gradient")]
    shown = "".join(cm.loc[~marked[cm.index], "text"])
    assert shown == "How long is it?One centimetre, café."  # the user's text and the response, nothing else
    assert "assistant" in "".join(cm.loc[marked[cm.index], "text"])
    plain = df[(df.pair_id == "capital") & (df.method == "gradient") & (df.side == "chosen")]
    assert "".join(plain.loc[~marked[plain.index], "text"]) == \
        "What is the capital of France?The capital of France is Paris."  # a templated plain-text prompt
    pd.testing.assert_series_equal(df["score"], before)
