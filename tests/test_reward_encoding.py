"""A reward model's input: tiviz encodes each pair exactly as TRL's `RewardTrainer` does (its own processed
dataset rows are the reference), with character spans that rebuild the prompt and the response."""

from __future__ import annotations

import logging
import tempfile
import warnings

import pytest
import torch

from tiviz.attribution.core import attribute
from tiviz.data import PreferencePair, load_pairs
from tiviz.scoring import make_scorer, score_pairs
from tiviz.testing import TINY_CHAT_TEMPLATE, tiny_pairs, tiny_reward_model, tiny_tokenizer
from tiviz.tokenization import encode_reward, encode_reward_pair

TEXTS = ["The capital of France is Paris.", "Café au lait 😊 naïve", "مرحبا بالعالم", "  leading and trailing  ",
         "line\r\nbreak\ttab", "x", ""]
# a template that trims each content, as several shipped ones do
TRIMMING_TEMPLATE = TINY_CHAT_TEMPLATE.replace("{{ message['content'] }}", "{{ message['content'] | trim }}")


def trl_rows(tok, pairs: list[PreferencePair], conversational: bool) -> list[dict]:
    """`RewardTrainer`'s own processed rows (chosen_ids, rejected_ids) of the pairs, in TRL's conversational schema
    (a user turn, an assistant turn) or its standard one (strings)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    def turn(role, text):
        return [{"role": role, "content": text}] if conversational else text

    rows = [{"prompt": p.prompt if isinstance(p.prompt, list) or not conversational else turn("user", p.prompt),
             "chosen": turn("assistant", p.chosen), "rejected": turn("assistant", p.rejected)} for p in pairs]
    args = RewardConfig(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, bf16=False, max_length=None,
                        disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(model=tiny_reward_model(), args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tok)
    return [trainer.train_dataset[i] for i in range(len(rows))]


def check_equal_to_trl(tok, pairs: list[PreferencePair], conversational: bool) -> None:
    for p, row in zip(pairs, trl_rows(tok, pairs, conversational), strict=True):
        chosen, rejected = encode_reward_pair(tok, p)
        assert chosen.input_ids == row["chosen_ids"]
        assert rejected.input_ids == row["rejected_ids"]
        for seq, text in ((chosen, p.response_text("chosen")), (rejected, p.response_text("rejected"))):
            assert "".join(seq.token_text(i) for i in range(seq.response_start, len(seq))) == text
            assert "".join(seq.token_text(i) for i in range(seq.response_start)) == seq.prompt_text


def tiny_with(template: str | None):
    tok = tiny_tokenizer(chat_template=False)
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", [TINY_CHAT_TEMPLATE, TRIMMING_TEMPLATE, None],
                         ids=["chat-template", "trimming-template", "no-template"])
def test_ids_equal_reward_trainers_own_rows(template):
    pairs = load_pairs(tiny_pairs()) + [PreferencePair(f"t{i}", "Say it.", t, "no") for i, t in enumerate(TEXTS)]
    check_equal_to_trl(tiny_with(template), pairs, conversational=template is not None)


def test_conversational_prompt_with_a_system_turn_equals_trl(tok):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
              {"role": "assistant", "content": "Which France?"}, {"role": "user", "content": "The country."}]
    check_equal_to_trl(tok, [PreferencePair("conv", prompt, "Paris.", "Rome.")], conversational=True)


def test_chat_template_end_of_turn_closes_the_response(tok):
    seq = encode_reward(tok, "Q?", "Answer.")
    assert seq.tokens[-2:] == ["<|im_end|>", "Ċ"]  # the template's end-of-turn, in the response span
    assert seq.char_spans[-2:] == [(7, 7), (7, 7)]  # owning no character of the response
    assert seq.prompt_text.endswith("<|im_start|>assistant\n")
    assert seq.tokens[seq.response_start] == "A"


def test_standard_form_adds_eos_once():
    tok = tiny_tokenizer(chat_template=False)
    once = encode_reward(tok, "Q?", "Answer.")
    assert once.input_ids[-1] == tok.eos_token_id and once.input_ids.count(tok.eos_token_id) == 1
    assert encode_reward(tok, "Q?", "Answer.<|im_end|>").input_ids == once.input_ids  # as TRL: not twice


def test_a_token_across_the_prompts_end_belongs_to_the_response(tok):
    """Without a template the text is tokenised whole, so BPE may merge the prompt's last characters with the
    response's first: that token is a response token and owns the response's first characters."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "a": 1, "b": 2, "ab": 3}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    # no pre-tokenizer: the whole text is one word, so "a" + "b" may merge
    merging = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")
    seq = encode_reward(merging, "aa", "bb")
    assert seq.input_ids == merging("aabb<eos>")["input_ids"] == [1, 3, 2, 0]
    assert seq.response_start == 1 and seq.prompt_text == "aa"
    # contiguous spans: the prompt's token owns the whole prompt, the merged token the response's first "b"
    assert [seq.token_text(i) for i in range(len(seq))] == ["aa", "b", "b", ""]


def test_cut_to_max_length_as_encode_cuts(tok, caplog):
    full = encode_reward(tok, "A long prompt " * 4, "Short answer.")
    with caplog.at_level(logging.WARNING):
        cut = encode_reward(tok, "A long prompt " * 4, "Short answer.", max_length=20)
    assert cut.input_ids == full.input_ids[-20:] and cut.truncated == len(full) - 20
    assert cut.n_response == full.n_response and "truncated to max_length=20" in caplog.text
    start = encode_reward(tok, "A long prompt " * 4, "Short answer.", max_length=20, truncation_mode="keep_start")
    assert start.input_ids == full.input_ids[:20] and start.n_response == 0


@pytest.mark.parametrize("template", [TINY_CHAT_TEMPLATE, None], ids=["chat-template", "no-template"])
def test_a_long_text_is_tokenised_only_where_the_cut_keeps(template):
    """A text far over `cut_bound(max_length)` characters: only the kept end is tokenised, the same tokens."""
    tok = tiny_with(template)
    prompt, response = "Tell me. " * 3000, "Café 😊 and more. " * 2000
    full = encode_reward(tok, prompt, response)
    end = encode_reward(tok, prompt, response, max_length=64)
    assert end.chars_untokenised > 0 and end.input_ids == full.input_ids[-64:]
    assert end.char_spans == full.char_spans[-64:] and end.n_response == 64
    start = encode_reward(tok, prompt, response, max_length=64, truncation_mode="keep_start")
    assert start.chars_untokenised > 0 and start.input_ids == full.input_ids[:64]


def test_a_template_that_rewrites_the_response_is_refused(tok):
    from tiviz.errors import DataError

    rewriting = tiny_with(TINY_CHAT_TEMPLATE.replace("{{ message['content'] }}", "{{ message['content'] | upper }}"))
    with pytest.raises(DataError, match="rewrites the response"):
        encode_reward(rewriting, "Q?", "answer")


def test_scorer_and_attribution_read_the_reward_trainer_encoding(tok, pairs):
    """The reward-model scorer's scores are the model's own forward on TRL's rows; the attribution table's
    tokens are those rows, its character spans index the response text."""
    rm = tiny_reward_model(seed=0)
    table = score_pairs(make_scorer(rm, tokenizer=tok), pairs)
    df = attribute(rm, pairs, ["token_score"], tokenizer=tok, target="reward")
    for p, row, (_, scored) in zip(pairs, trl_rows(tok, pairs, True), table.iterrows(), strict=True):
        for side in ("chosen", "rejected"):
            ids = row[f"{side}_ids"]
            with torch.no_grad():
                own = float(rm(input_ids=torch.tensor([ids])).logits[0, 0])
            assert scored[side] == pytest.approx(own, abs=1e-5)
            g = df[(df["pair_id"] == p.id) & (df["side"] == side)].sort_values("position")
            assert g["token_id"].tolist() == ids
            resp = g[g["in_response"]]
            text = p.response_text(side)
            assert "".join(text[s:e] for s, e in zip(resp["char_start"], resp["char_end"], strict=True)) == text


@pytest.mark.integration
def test_default_models_tokenizer_equals_trl():
    from transformers import AutoTokenizer

    from tiviz.models import _default_model_folder

    tok = AutoTokenizer.from_pretrained(_default_model_folder())
    pairs = load_pairs(tiny_pairs()) + [PreferencePair(f"t{i}", "Say it.", t, "no") for i, t in enumerate(TEXTS)]
    check_equal_to_trl(tok, pairs, conversational=True)
