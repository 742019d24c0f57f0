"""Offsets under hostile text: for any response the tokenizer accepts, the response tokens' texts join back to
the response exactly; text it cannot take (lone surrogates) is a DataError naming the pair and the field."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiviz.errors import DataError
from tiviz.tokenization import encode

from .strategies import any_text, field_text, fuzz, message, valid_text

SURROGATE = re.compile("[\ud800-\udfff]")


def response_of(seq) -> str:
    return "".join(seq.token_text(i) for i in range(seq.response_start, len(seq)))


def check_spans(seq) -> None:
    """Spans are contiguous, in bounds, one per token: the invariant every offset consumer relies on."""
    assert len(seq.char_spans) == len(seq.input_ids) == len(seq.tokens)
    for part, lo, hi in ((seq.prompt_text, 0, seq.response_start), (seq.response_text, seq.response_start, len(seq))):
        prev = seq.char_spans[lo][0] if hi > lo else 0
        for s, e in seq.char_spans[lo:hi]:
            assert s == prev and s <= e <= len(part)
            prev = e


def encode_or_refuse(tok, prompt, response, **kwargs):
    """Encode; a DataError is allowed only for text holding a lone surrogate, and must name the field."""
    try:
        return encode(tok, prompt, response, label="pair 'fuzz' (chosen)", **kwargs)
    except DataError as err:
        texts = {"prompt": prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt),
                 "response": response}
        assert err.field in texts and SURROGATE.search(texts[err.field]), err
        assert "pair 'fuzz' (chosen)" in str(err) and "surrogate" in str(err)
        return None


@fuzz(200)
@given(prompt=any_text, response=any_text)
def test_tiny_tokenizer_offsets_rebuild_any_response(tok, prompt, response, fuzz_counter):
    fuzz_counter["tokenization: tiny tokenizer offsets"] += 1
    seq = encode_or_refuse(tok, prompt, response)
    if seq is None:
        return
    assert response_of(seq) == response
    assert "".join(seq.token_text(i) for i in range(seq.response_start)) == seq.prompt_text
    assert seq.input_ids[-1] == tok.eos_token_id and seq.token_text(len(seq) - 1) == ""
    check_spans(seq)


@fuzz(60)
@given(messages=st.lists(message, min_size=1, max_size=3), response=valid_text)
def test_conversational_prompts_keep_exact_offsets(tok, messages, response, fuzz_counter):
    fuzz_counter["tokenization: conversational prompts"] += 1
    seq = encode(tok, messages, response)
    assert response_of(seq) == response
    assert all(m["content"] in seq.prompt_text for m in messages)
    check_spans(seq)


@fuzz(120)
@given(prompt=valid_text, response=valid_text, max_length=st.integers(1, 40),
       mode=st.sampled_from(["keep_end", "keep_start"]))
def test_truncation_cuts_counts_and_keeps_offsets_honest(tok, prompt, response, max_length, mode, fuzz_counter):
    """Text longer than the context: what is kept is a true slice of the response, and the cut is counted."""
    fuzz_counter["tokenization: truncation"] += 1
    full = encode(tok, prompt, response)
    seq = encode(tok, prompt, response, max_length=max_length, truncation_mode=mode)
    assert len(seq) == min(len(full), max_length)
    assert seq.truncated == len(full) - len(seq)
    kept = response_of(seq)
    if mode == "keep_end":
        assert seq.input_ids == full.input_ids[seq.truncated:]
        assert response.endswith(kept)
    else:
        assert seq.input_ids == full.input_ids[: len(seq)]
        assert response.startswith(kept)
    check_spans(seq)


def test_truncation_warning_names_the_count(tok, caplog):
    text = "word " * 200  # 1000 bytes: longer than the tiny model's 512-token default
    with caplog.at_level(logging.WARNING, logger="tiviz.tokenization"):
        seq = encode(tok, "Q?", text, max_length=512, label="pair 'long' (chosen)")
    full = encode(tok, "Q?", text)
    assert seq.truncated == len(full) - 512 > 0
    assert f"pair 'long' (chosen): sequence of {len(full)} tokens truncated to max_length=512 " \
           f"({seq.truncated} tokens cut from the start)" in caplog.text


def test_corpus_texts_rebuild_with_the_tiny_tokenizer(tok, corpus_texts):
    for item in corpus_texts:
        seq = encode(tok, "Say it.", item["text"])
        assert response_of(seq) == item["text"], item["name"]
        check_spans(seq)


@pytest.mark.integration
def test_corpus_texts_rebuild_with_smollm2(smol_tokenizer, corpus_texts):
    """The real BPE tokenizer merges bytes of multi-byte characters; the offsets must still rebuild the text."""
    assert smol_tokenizer.is_fast
    for item in corpus_texts:
        seq = encode(smol_tokenizer, "Say it.", item["text"])
        assert response_of(seq) == item["text"], item["name"]
        check_spans(seq)


@pytest.mark.integration
@fuzz(80)
@given(prompt=valid_text, response=any_text)
def test_smollm2_offsets_rebuild_generated_text(smol_tokenizer, prompt, response, fuzz_counter):
    fuzz_counter["tokenization: SmolLM2 tokenizer offsets"] += 1
    seq = encode_or_refuse(smol_tokenizer, prompt, response)
    if seq is not None:
        assert response_of(seq) == response
        check_spans(seq)


@fuzz(120)
@given(prompt=any_text, response=any_text, template=st.booleans())
def test_reward_encoding_equals_trls_for_any_text(tok, prompt, response, template, fuzz_counter):
    """A reward model's encoding is TRL RewardTrainer's for any text (its own `_tokenize`, and EOS added as its
    `add_eos` adds it), with spans that rebuild prompt and response; a lone surrogate is a DataError."""
    from trl.data_utils import _tokenize

    from tiviz.testing import tiny_tokenizer
    from tiviz.tokenization import encode_reward

    fuzz_counter["tokenization: reward-model encoding"] += 1
    tokenizer = tok if template else tiny_tokenizer(chat_template=False)
    try:
        seq = encode_reward(tokenizer, prompt, response, label="pair 'fuzz' (chosen)")
    except DataError as err:
        assert SURROGATE.search({"prompt": prompt, "response": response}[err.field]), err
        return
    if template:
        want = _tokenize(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])
    else:
        eos = tokenizer.eos_token
        want = _tokenize(tokenizer, prompt + (response if response.endswith(eos) else response + eos))
    assert seq.input_ids == list(want["input_ids"])
    assert response_of(seq) == response
    assert "".join(seq.token_text(i) for i in range(seq.response_start)) == seq.prompt_text
    check_spans(seq)


def test_lone_surrogate_is_a_data_error_not_a_type_error(tok):
    with pytest.raises(DataError) as info:
        encode(tok, "Q?", "broken \ud83d emoji", label="pair 'x' (rejected)")
    assert info.value.field == "response" and "U+D83D at character 7" in str(info.value)
    assert str(info.value).startswith("pair 'x' (rejected), field 'response'")



@pytest.fixture(scope="module")
def tiny():
    from tiviz.testing import tiny_model

    return tiny_model(seed=0)


@fuzz(10)
@given(prompt=field_text, chosen=field_text, rejected=field_text)
def test_table_text_columns_rebuild_each_response(tok, tiny, prompt, chosen, rejected, fuzz_counter):
    """End to end: the tidy table's `text` over the response tokens is the response; char spans index it."""
    from tiviz.attribution import attribute

    fuzz_counter["tokenization: attribute() table offsets"] += 1
    df = attribute(tiny, [{"id": "f", "prompt": prompt, "chosen": chosen, "rejected": rejected}], ["gradient"],
                   tokenizer=tok)
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        rows = df[(df.side == side) & df.in_response]
        assert "".join(rows.text) == text
        assert all(text[s:e] == t for s, e, t in zip(rows.char_start, rows.char_end, rows.text, strict=True))
