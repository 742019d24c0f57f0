"""Tokenisation: exact response spans, character offsets that rebuild the text, truncation, padding."""

from __future__ import annotations

import logging

import pytest
import torch

from tiviz.data import load_pairs
from tiviz.tokenization import collate, contiguous_spans, encode, encode_pair

TEXTS = ["The capital of France is Paris.", "Café au lait 😊 naïve", "مرحبا بالعالم", "e\u0301 combining",
         "  leading and trailing  ", "line\r\nbreak\ttab", "x"]


def response_text(seq):
    return "".join(seq.token_text(i) for i in range(seq.response_start, len(seq)))


@pytest.mark.parametrize("text", TEXTS)
def test_offsets_rebuild_the_response_exactly(tok, text):
    seq = encode(tok, "Say something.", text)
    assert response_text(seq) == text
    prompt = "".join(seq.token_text(i) for i in range(seq.response_start))
    assert prompt == seq.prompt_text


def test_response_span_and_chat_template(tok):
    seq = encode(tok, "Q?", "Answer.")
    assert seq.prompt_text == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    resp_ids = seq.input_ids[seq.response_start:]
    assert resp_ids[-1] == tok.eos_token_id
    assert tok.decode(resp_ids[:-1]) == "Answer."


def test_conversational_prompt_uses_messages(tok):
    (pair,) = load_pairs([{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                           "chosen": [{"role": "assistant", "content": "Hello"}],
                           "rejected": [{"role": "assistant", "content": "Bye"}]}])
    c, r = encode_pair(tok, pair)
    assert "<|im_start|>system\nBe brief.<|im_end|>" in c.prompt_text
    assert c.prompt_text == r.prompt_text and response_text(c) == "Hello"


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_truncation_warns_with_the_count(tok, caplog, mode):
    full = encode(tok, "Q?", "a fairly long answer")
    with caplog.at_level(logging.WARNING):
        seq = encode(tok, "Q?", "a fairly long answer", max_length=30, truncation_mode=mode)
    cut = len(full) - 30
    assert len(seq) == 30 and seq.truncated == cut
    assert f"{cut} tokens cut" in caplog.text
    if mode == "keep_end":
        assert seq.input_ids == full.input_ids[cut:]
        assert seq.response_start == full.response_start - cut  # only prompt tokens went
        assert "".join(seq.token_text(i) for i in range(seq.response_start, len(seq))) == "a fairly long answer"
    else:
        assert seq.input_ids == full.input_ids[:30]


def test_contiguous_spans_cover_text():
    assert contiguous_spans([(0, 3), (4, 7), (4, 7), (0, 0)], 8) == [(0, 3), (3, 7), (7, 7), (7, 8)]


def test_collate_left_and_right(tok):
    a, b = encode(tok, "Q", "long answer here"), encode(tok, "Q", "hi")
    right = collate([a, b], tok.pad_token_id, "right")
    left = collate([a, b], tok.pad_token_id, "left")
    for batch in (right, left):
        for row, seq in enumerate((a, b)):
            valid = batch.attention_mask[row].bool()
            assert batch.input_ids[row][valid].tolist() == seq.input_ids
            assert batch.position_ids[row][valid].tolist() == list(range(len(seq)))
            assert int(batch.response_mask[row].sum()) == seq.n_response
    assert torch.equal(left.input_ids[1, -len(b):], torch.tensor(b.input_ids))
