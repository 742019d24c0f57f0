"""Resource bounds: an over-long sequence is cut with a warning that counts the cut tokens, and integrated
gradients never puts more than `internal_batch_size` rows through the model at once, with the same scores."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tiviz.attribution import attribute
from tiviz.testing import tiny_model

LONG = {"id": "long", "prompt": "Summarise: " + "lorem ipsum " * 20,
        "chosen": "A long answer. " * 20, "rejected": "Short."}
IG_PAIR = {"id": "ig", "prompt": "Explain.", "chosen": "A long answer. " * 8, "rejected": "Short."}


def test_attribute_cuts_long_sequences_and_says_how_many_tokens(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="tiviz.tokenization"):
        df = attribute(tiny_model(seed=0), [LONG], ["gradient"], tokenizer=tok, max_length=128)
    chosen = df[df.side == "chosen"]
    assert len(chosen) == 128 and chosen.position.max() == 127
    rendered = tok.apply_chat_template([{"role": "user", "content": LONG["prompt"]}], add_generation_prompt=True,
                                       tokenize=False)
    # byte-level tokenizer: one token per byte, one per special token; then the response and EOS
    prompt_tokens = len(rendered.replace("<|im_start|>", "S").replace("<|im_end|>", "E").encode())
    full = prompt_tokens + len(LONG["chosen"].encode()) + 1
    assert (prompt_tokens, full) == (270, 571)
    assert f"pair 'long' (chosen): sequence of {full} tokens truncated to max_length=128 ({full - 128} tokens " \
           "cut from the start)" in caplog.text
    assert "pair 'long' (rejected)" in caplog.text
    # keep_end kept the end of the response: its tokens' text is a suffix of the answer
    resp = "".join(chosen[chosen.in_response].text)
    assert LONG["chosen"].endswith(resp) and len(resp) == 127  # 128 minus EOS


@pytest.fixture(scope="module")
def ig_runs():
    """IG on a 148-token pair with a small and a large internal batch, recording every forward's batch rows."""
    model = tiny_model(seed=1)
    from tiviz.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    rows: list[int] = []
    model.register_forward_pre_hook(
        lambda mod, args, kwargs: rows.append(int(kwargs["inputs_embeds"].shape[0])), with_kwargs=True)
    out = {}
    for ibs in (2, 64):
        rows.clear()
        df = attribute(model, [IG_PAIR], ["integrated_gradients"], tokenizer=tok, n_steps=4,
                       internal_batch_size=ibs)
        out[ibs] = (df, list(rows))
    return out


def test_integrated_gradients_respects_the_internal_batch_budget(ig_runs):
    _, small = ig_runs[2]
    _, large = ig_runs[64]
    # 2 sequences x 4 steps = 8 rows of IG: in chunks of 2 under the small budget; the large budget lets bigger
    # chunks through (tiviz may cap them further by a token budget), so the small one is what bounded them
    assert max(small) == 2 and sum(small) == sum(large)
    assert 2 < max(large) <= 8 and len(small) > len(large)


def test_integrated_gradients_scores_do_not_depend_on_the_budget(ig_runs):
    a, _ = ig_runs[2]
    b, _ = ig_runs[64]
    assert len(a) == len(b) == 182  # 148 + 34 tokens
    assert np.allclose(a.score, b.score, rtol=1e-4, atol=1e-6)
    assert np.allclose(a.convergence_delta, b.convergence_delta, rtol=1e-3, atol=1e-5)
    assert a[a.in_response].score.abs().sum() > 0  # a real attribution, not zeros on both sides
