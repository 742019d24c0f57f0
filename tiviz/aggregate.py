"""Word-level views of the tidy table, and the marking of chat-template and special tokens.

`aggregate_words` merges the subword tokens of each word into one row (`cent|imet|re` -> `centimetre`): scores
are summed, weights summed then renormalised to 1 over the response, character spans joined. Views that hide
template tokens filter with `template_tokens`; scores never change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import pandas as pd

from tiviz.data import PreferencePair
from tiviz.table import PROVENANCE_KEY, provenance, validate

Aggregate = Literal["token", "word"]
LEVELS: tuple[str, ...] = ("token", "word")
GROUP = ["pair_id", "side", "method"]
# Special tokens as tokenizers write them: <|im_start|>, <s>, </s>, <pad>, [CLS]-style ones are not used by
# causal LMs. Used when no tokenizer's list of special ids is given.
SPECIAL_PIECE = re.compile(r"^<\|?[^<>\s]*\|?>$")
WORD_RULE = ("a token continues the word before it when its span touches the previous one and either it owns "
             "no text (the tail of a split character) or its text starts with a letter or digit and the previous "
             "text ends with one or is only spaces; special tokens and the prompt/response boundary always split")


def is_special_piece(tokens: pd.Series) -> pd.Series:
    """True where the tokenizer piece looks like a special token (`<|im_end|>`, `</s>`)."""
    return tokens.astype(str).str.match(SPECIAL_PIECE)


def aggregate_words(df: pd.DataFrame) -> pd.DataFrame:
    """Merge subword tokens into words, per (pair, side, method); the result obeys the same table contract.

    A merged row keeps the `position`, `token_id`, `target_value` and `convergence_delta` of the word's first
    token; `token` and `text` are its tokens' pieces and texts joined, `char_start`/`char_end` the span from the
    first token's start to the last one's end; `score` is the sum of the scores and `weight` the sum of the
    weights renormalised so the response's weights sum to 1 (prompt weights stay NaN). The provenance gains an
    `aggregate` entry that says so.
    """
    if provenance(df).get("aggregate", {}).get("level") == "word":
        return df
    g = df.sort_values([*GROUP, "position"], kind="stable").reset_index(drop=True)
    grouped = g.groupby(GROUP, sort=False)
    text = g["text"].astype(str)
    special = is_special_piece(g["token"])
    prev_text = grouped["text"].shift().astype("string").fillna("")
    first = grouped.cumcount() == 0
    touching = g["char_start"] == grouped["char_end"].shift()
    same_part = g["in_response"] == grouped["in_response"].shift()
    prev_special = special.groupby([g[c] for c in GROUP], sort=False).shift().astype("boolean").fillna(False)
    # a space token before a word joins it, as a real tokenizer's "Ġword" piece does
    continues_word = (text == "") | (text.str.match(r"^\w") & prev_text.str.contains(r"(?:\w|^[ \t]+)$"))
    continues = ~first & touching & same_part & ~special & ~prev_special.astype(bool) & continues_word
    word = (~continues).cumsum()
    out = g.groupby(word, sort=False).agg(
        pair_id=("pair_id", "first"), side=("side", "first"), position=("position", "first"),
        token_id=("token_id", "first"), token=("token", "sum"), text=("text", "sum"),
        char_start=("char_start", "min"), char_end=("char_end", "max"), in_response=("in_response", "first"),
        method=("method", "first"), score=("score", lambda s: s.sum(min_count=1)),
        weight=("weight", lambda s: s.sum(min_count=1)), target_value=("target_value", "first"),
        convergence_delta=("convergence_delta", "first"),
    ).reset_index(drop=True)
    total = out["weight"].where(out["in_response"]).groupby([out[c] for c in GROUP]).transform("sum")
    out["weight"] = (out["weight"] / total).where(out["in_response"] & (total > 0), out["weight"])
    out = validate(out, source="word-level table")
    prov = provenance(df)
    prov["aggregate"] = {"level": "word", "rule": WORD_RULE, "score": "sum", "weight": "sum, renormalised to 1 "
                         "over the response", "position_token_id": "of the word's first token",
                         "tokens_before": len(df), "rows_after": len(out)}
    out.attrs = {**df.attrs, PROVENANCE_KEY: prov}
    return out


def check_level(level: str) -> None:
    """Raise `ConfigError` unless `level` is one of `LEVELS` (checked before any work is done)."""
    if level not in LEVELS:
        from tiviz.errors import ConfigError

        raise ConfigError("aggregate", level, ", ".join(LEVELS))


def apply_aggregate(df: pd.DataFrame, level: Aggregate | str) -> pd.DataFrame:
    """The table at `level`: "token" (as it is) or "word" (`aggregate_words`)."""
    check_level(level)
    return aggregate_words(df) if level == "word" else df


def template_tokens(df: pd.DataFrame, pairs: Iterable[PreferencePair] | None = None,
                    special_ids: Sequence[int] | None = None) -> pd.Series:
    """True for the rows of chat-template and special tokens, so views can hide them; scores are untouched.

    Special tokens are recognised by id when `special_ids` (e.g. `tokenizer.all_special_ids`) is given, else by
    their piece (`<|im_start|>`). With `pairs`, the prompt tokens that lie outside the prompt's text (for messages,
    outside every message's content): role names and newlines a chat template added, are template tokens too.
    """
    if special_ids is not None:
        marked = df["token_id"].isin(list(special_ids))
    else:
        marked = is_special_piece(df["token"])
    if pairs is None:
        return marked.rename("template")
    by_id = {p.id: p for p in pairs}
    marked = marked.copy()
    prompt_rows = df[~df["in_response"].astype(bool)]
    for (pair_id, _side, _method), rows in prompt_rows.groupby(GROUP, sort=False):
        pair = by_id.get(str(pair_id))
        if pair is None:
            continue
        rows = rows.sort_values("position")
        rendered = "".join(rows["text"].astype(str))  # spans are contiguous: the joined texts are the prompt
        texts = [m["content"] for m in pair.prompt] if isinstance(pair.prompt, list) else [pair.prompt]
        contents = _content_spans(rendered, texts)
        inside = [any(s < e and a < e and s < b for s, e in contents) for a, b in
                  zip(rows["char_start"], rows["char_end"], strict=True)]
        marked.loc[rows.index] = marked.loc[rows.index] | ~pd.Series(inside, index=rows.index)
    return marked.rename("template")


def _content_spans(rendered: str, contents: list[str]) -> list[tuple[int, int]]:
    """Where each message content sits in the rendered prompt, searched in order (a template keeps the order)."""
    spans, at = [], 0
    for content in contents:
        start = rendered.find(content, at) if content else -1
        if start >= 0:
            spans.append((start, start + len(content)))
            at = start + len(content)
    return spans
