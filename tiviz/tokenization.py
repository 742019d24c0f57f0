"""Prompt + response tokenised together, keeping the response span and each token's character span, so that
scores map back onto the original text (multi-byte characters and emoji included).

The prompt is rendered with the tokenizer's chat template when it has one, and tokenised apart from the response
(as TRL does), so the response span is exact. Character spans are made contiguous: each token owns the text from
the previous token's end to its own end, so joining the spans of a segment gives back its text exactly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tiviz.data import PreferencePair, Text, message_text
from tiviz.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TruncationMode = Literal["keep_end", "keep_start"]
PaddingSide = Literal["left", "right"]
Side = Literal["chosen", "rejected"]
SIDES: tuple[Side, Side] = ("chosen", "rejected")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# A text longer than `cut_bound(max_length)` characters is cut to that (from the end truncation drops) before
# it is tokenised: a 2 MB field would otherwise be tokenised whole, about 1 GB with the tokenizer. The bound is
# generous (BPE tokens of text average about 4 characters); if the cut text still gives fewer than
# max_length + CUT_MARGIN tokens, the whole text is tokenised instead, so the tokens kept never change.
CHARS_PER_TOKEN = 32
MIN_CUT_CHARS = 16_384  # shorter texts are always tokenised whole (cheap), so their cut counts stay exact
CUT_MARGIN = 16


def cut_bound(max_length: int) -> int:
    """Most characters of one text tokenised for a sequence of at most `max_length` tokens."""
    return max(max_length * CHARS_PER_TOKEN, MIN_CUT_CHARS)

# Padded tokens (rows x length) per forward pass, for the batches of pairs and for integrated gradients' internal
# batches (steps x rows). The default model keeps about 1.5 MB per token for the backward, so 1024 tokens hold
# about 1.6 GB; on CPU a forward is no faster per token beyond a few hundred tokens.
TOKENS_PER_FORWARD = 1024


@dataclass
class EncodedSequence:
    """One tokenised prompt + response.

    `char_spans[i]` indexes `prompt_text` for prompt tokens (i < response_start) and `response_text` for response
    tokens. `truncated` counts the tokens cut to fit `max_length`; when a text was so long that only its kept
    end was tokenised (`chars_untokenised` > 0), it counts the tokens cut from what was tokenised.
    """

    input_ids: list[int]
    response_start: int
    prompt_text: str
    response_text: str
    tokens: list[str]
    char_spans: list[tuple[int, int]]
    truncated: int = 0
    chars_untokenised: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.response_start

    def token_text(self, i: int) -> str:
        """The original text owned by token i (may be empty for special tokens or split characters)."""
        s, e = self.char_spans[i]
        return (self.response_text if i >= self.response_start else self.prompt_text)[s:e]


@dataclass
class Batch:
    """Padded tensors for a list of sequences; `position_ids` follow the mask so padding side is invisible."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    response_mask: torch.Tensor  # (B, L) bool
    offsets: list[int]  # per row: index in the padded row of the sequence's token 0

    def to(self, device: Any) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
            self.response_mask.to(device), self.offsets,
        )


def render_prompt(tokenizer: Any, prompt: Text, *, use_chat_template: bool | None = None) -> tuple[str, bool]:
    """The prompt as the model sees it; returns (text, whether a chat template was applied)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template is None:
        use_chat_template = has_template
    if isinstance(prompt, list):
        if not has_template:
            raise DataError(
                "conversational pairs need a tokenizer with a chat template", field="prompt",
                fix="use a chat model, or give the prompt as plain text",
            )
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), True
    if use_chat_template and has_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
    return prompt, False


def contiguous_spans(offsets: list[tuple[int, int]], length: int, start: int = 0) -> list[tuple[int, int]]:
    """Make raw tokenizer offsets contiguous and covering [start, length): token i owns [end_{i-1}, max(end_i, .))."""
    spans = []
    prev = start
    for _, end in offsets:
        end = min(max(end, prev), length)
        spans.append((prev, end))
        prev = end
    if spans:
        spans[-1] = (spans[-1][0], length)
    return spans


def _check_encodable(text: str, what: str, label: str) -> None:
    """Raise `DataError` naming the field when `text` holds a lone surrogate (the Rust tokenizer rejects these
    with a TypeError that names nothing)."""
    bad = _SURROGATE.search(text)
    if bad:
        raise DataError(
            f"has a lone surrogate U+{ord(bad.group()):04X} at character {bad.start()}", source=label or None,
            field=what, fix="repair the text's encoding; a lone surrogate is not valid Unicode",
        )


def _tokenize(tokenizer: Any, text: str, add_special_tokens: bool, what: str,
              label: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not text:
        return [], []
    _check_encodable(text, what, label)
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _tokenize_within(tokenizer: Any, text: str, add_special_tokens: bool, what: str, label: str,
                     max_length: int | None, keep_end: bool) -> tuple[list[int], list[tuple[int, int]], int]:
    """(ids, contiguous spans over `text`, characters left untokenised): at most `cut_bound(max_length)`
    characters from the end truncation keeps are tokenised; the spans index the whole text."""
    if max_length is not None and len(text) > cut_bound(max_length):
        bound = cut_bound(max_length)
        start = len(text) - bound if keep_end else 0
        piece = text[start:] if keep_end else text[:bound]
        ids, off = _tokenize(tokenizer, piece, add_special_tokens, what, label)
        if len(ids) >= max_length + CUT_MARGIN:
            shifted = [(a + start, b + start) for a, b in off]
            return ids, contiguous_spans(shifted, start + len(piece), start=start), len(text) - bound
    ids, off = _tokenize(tokenizer, text, add_special_tokens, what, label)
    return ids, contiguous_spans(off, len(text)), 0


def encode(
    tokenizer: Any,
    prompt: Text,
    response: Text,
    *,
    max_length: int | None = None,
    truncation_mode: TruncationMode = "keep_end",
    add_eos: bool = True,
    use_chat_template: bool | None = None,
    label: str = "",
) -> EncodedSequence:
    """Tokenise prompt and response together.

    Args:
        tokenizer: a fast (offset-capable) Hugging Face tokenizer.
        prompt, response: text or chat messages (TRL's standard or conversational schema).
        max_length: int | None; longer sequences are cut with a warning saying how many tokens went (a text
            over `cut_bound(max_length)` characters is cut to that before tokenising, so memory follows
            max_length, not the text's length; the tokens kept are the same).
        truncation_mode: "keep_end" (default, drop from the prompt's start) or "keep_start" (drop the end).
        add_eos: append the EOS token to the response (as TRL does), default True.
        label: how to name the sequence in the truncation warning.
    """
    _check_options(tokenizer, truncation_mode)
    prompt_text, templated = render_prompt(tokenizer, prompt, use_chat_template=use_chat_template)
    response_text = message_text(response)
    keep_end = truncation_mode == "keep_end"
    p_ids, p_spans, p_cut = _tokenize_within(tokenizer, prompt_text, not templated, "prompt", label, max_length,
                                             keep_end)
    r_ids, r_spans, r_cut = _tokenize_within(tokenizer, response_text, False, "response", label, max_length,
                                             keep_end)
    if add_eos and tokenizer.eos_token_id is not None:
        r_ids.append(tokenizer.eos_token_id)
        r_spans.append((len(response_text), len(response_text)))
    return _fitted(tokenizer, p_ids + r_ids, p_spans + r_spans, len(p_ids), prompt_text, response_text,
                   max_length=max_length, truncation_mode=truncation_mode, label=label, chars_cut=p_cut + r_cut)


def _fitted(tokenizer: Any, ids: list[int], spans: list[tuple[int, int]], start: int, prompt_text: str,
            response_text: str, *, max_length: int | None, truncation_mode: TruncationMode, label: str,
            chars_cut: int) -> EncodedSequence:
    """The sequence cut to `max_length` tokens (from the start for keep_end, else the end) with a warning that
    says how much went; `start` is the response's first token."""
    cut = 0
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        if truncation_mode == "keep_end":
            ids, spans = ids[cut:], spans[cut:]
            start = max(start - cut, 0)
        else:
            ids, spans = ids[:max_length], spans[:max_length]
            start = min(start, max_length)
        where = "start" if truncation_mode == "keep_end" else "end"
        if chars_cut:  # only the kept end of a long text was tokenised: its full token count is unknown
            log.warning(
                "%s: sequence of more than %d tokens truncated to max_length=%d (%d characters cut from the %s "
                "before tokenising, then %d tokens)", label or "sequence", len(ids) + cut, max_length,
                chars_cut, where, cut)
        else:
            log.warning("%s: sequence of %d tokens truncated to max_length=%d (%d tokens cut from the %s)",
                        label or "sequence", len(ids) + cut, max_length, cut, where)
    return EncodedSequence(
        input_ids=ids, response_start=start, prompt_text=prompt_text, response_text=response_text,
        tokens=tokenizer.convert_ids_to_tokens(ids), char_spans=spans, truncated=cut,
        chars_untokenised=chars_cut,
    )


def encode_pair(
    tokenizer: Any, pair: PreferencePair, **kwargs: Any
) -> tuple[EncodedSequence, EncodedSequence]:
    """Encode both sides of a pair with the same prompt; kwargs as in `encode`."""
    return tuple(  # type: ignore[return-value]
        encode(tokenizer, pair.prompt, pair.response(side), label=f"pair {pair.id!r} ({side})", **kwargs)
        for side in SIDES
    )


def encode_reward(
    tokenizer: Any,
    prompt: Text,
    response: Text,
    *,
    max_length: int | None = None,
    truncation_mode: TruncationMode = "keep_end",
    label: str = "",
) -> EncodedSequence:
    """Tokenise a (prompt, response) for a reward model exactly as TRL's `RewardTrainer` tokenises a pair's side
    (docs/METHOD.md §9), so a reward model trained by TRL is read on the tokens it was trained on.

    With a chat template: the conversation (a text prompt as one user turn, the response as the assistant turn)
    rendered whole with no generation prompt, the template's end-of-turn closing the response, and tokenised
    without special tokens (TRL's `apply_chat_template(prompt + chosen, tokenize=True)`). Without one: the text
    `prompt + response + EOS` (EOS not added twice) tokenised as one string with the tokenizer's special tokens
    (TRL's standard form). Both are tokenised whole, so a token may straddle the prompt's end: it belongs to the
    response. The tokens after the response's text (end-of-turn, EOS) belong to the response, with empty
    character spans at its end; spans are contiguous as in `encode`. TRL drops a pair longer than its
    `max_length`; here it is cut as `encode` cuts (`truncation_mode`), so the ids equal TRL's for every pair TRL
    keeps.
    """
    _check_options(tokenizer, truncation_mode)
    for what, value in (("prompt", prompt), ("response", response)):
        for text in [value] if isinstance(value, str) else [str(m.get("content", "")) for m in value]:
            _check_encodable(text, what, label)
    response_text = message_text(response)
    if getattr(tokenizer, "chat_template", None) is not None:
        full, segments = _render_conversation(tokenizer, prompt, response, label)
        special = False
    else:
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError("conversational pairs need a tokenizer with a chat template", source=label or None,
                            field="prompt" if not isinstance(prompt, str) else "response",
                            fix="use a reward model whose tokenizer has a chat template, or give plain text")
        eos = tokenizer.eos_token
        full = prompt + response + (eos if eos and not response.endswith(eos) else "")
        segments = [(len(prompt), 0, len(response))]
        special = True
    ids, spans, chars_cut = _tokenize_within(tokenizer, full, special, "prompt + response", label, max_length,
                                             truncation_mode == "keep_end")
    begins = segments[0][0]  # where the response's text starts in `full`
    n_prompt = next((i for i, (_, end) in enumerate(spans) if end > begins), len(ids))
    prompt_spans = contiguous_spans([(a, min(b, begins)) for a, b in spans[:n_prompt]], begins,
                                    start=spans[0][0] if spans else 0)
    response_spans = contiguous_spans([(0, _response_position(b, segments)) for _, b in spans[n_prompt:]],
                                      len(response_text))
    return _fitted(tokenizer, ids, prompt_spans + response_spans, n_prompt, full[:begins], response_text,
                   max_length=max_length, truncation_mode=truncation_mode, label=label, chars_cut=chars_cut)


def encode_reward_pair(
    tokenizer: Any, pair: PreferencePair, **kwargs: Any
) -> tuple[EncodedSequence, EncodedSequence]:
    """Encode both sides of a pair for a reward model, as TRL's `RewardTrainer` does; kwargs as in
    `encode_reward`."""
    return tuple(  # type: ignore[return-value]
        encode_reward(tokenizer, pair.prompt, pair.response(side), label=f"pair {pair.id!r} ({side})", **kwargs)
        for side in SIDES
    )


# Stands for a response message's content while the chat template renders around it (private-use characters, so
# no template or text holds it).
_MARK = "\ue000tiviz-response-{}\ue001"


def _render_conversation(tokenizer: Any, prompt: Text, response: Text,
                         label: str) -> tuple[str, list[tuple[int, int, int]]]:
    """The conversation prompt + response rendered by the chat template, and where the text of each response
    message `message_text` joins lies in it: (position in the rendering, position in the response's text,
    length). The template's own text around the contents is found by rendering it with a mark for each content."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    answer = [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
    shown = [j for j, m in enumerate(answer) if m.get("role") == "assistant"] or list(range(len(answer)))
    marks = {j: _MARK.format(k) for k, j in enumerate(shown)}
    full = tokenizer.apply_chat_template(messages + answer, tokenize=False)
    skeleton = tokenizer.apply_chat_template(
        messages + [{**m, "content": marks[j]} if j in marks else m for j, m in enumerate(answer)], tokenize=False)
    parts: list[str] = []
    rest = skeleton
    for j in shown:
        before, sep, rest = rest.partition(marks[j])
        if not sep or marks[j] in rest:
            parts = []
            break
        parts.append(before)
    contents = [str(answer[j]["content"]) for j in shown]
    for strip in (False, True):  # some templates trim a message's content
        texts = [c.strip() if strip else c for c in contents]
        if parts and "".join(a + b for a, b in zip(parts, texts, strict=True)) + rest == full:
            segments, at, where = [], 0, 0
            for part, text, content in zip(parts, texts, contents, strict=True):
                at += len(part)
                lead = len(content) - len(content.lstrip()) if strip else 0
                segments.append((at, where + lead, len(text)))
                at += len(text)
                where += len(content) + 1  # message_text joins the contents with newlines
            return full, segments
    raise DataError("the chat template rewrites the response's text, so its tokens cannot be mapped back onto it",
                    source=label or None, field="response",
                    fix="use a reward model whose chat template renders an assistant message's content as it is")


def _response_position(pos: int, segments: list[tuple[int, int, int]]) -> int:
    """A position in the rendered text as a position in the response's text: inside a message's content its own
    place, between or after the contents the end of the content before it, before the first one 0."""
    out = 0
    for at, where, n in segments:
        if pos < at:
            break
        out = where + min(pos - at, n)
    return out


def _check_options(tokenizer: Any, truncation_mode: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokenizer", type(tokenizer).__name__, "a fast tokenizer (character offsets needed)")
    if truncation_mode not in ("keep_end", "keep_start"):
        raise ConfigError("truncation_mode", truncation_mode, "'keep_end', 'keep_start'")


def collate(seqs: list[EncodedSequence], pad_token_id: int, padding_side: PaddingSide = "right") -> Batch:
    """Pad sequences into one batch; position ids count valid tokens only, so left and right padding agree."""
    import torch

    if padding_side not in ("left", "right"):
        raise ConfigError("padding_side", padding_side, "'left', 'right'")
    L = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.long)
    response_mask = torch.zeros((B, L), dtype=torch.bool)
    offsets = []
    for b, s in enumerate(seqs):
        off = L - len(s) if padding_side == "left" else 0
        offsets.append(off)
        input_ids[b, off : off + len(s)] = torch.tensor(s.input_ids, dtype=torch.long)
        attention_mask[b, off : off + len(s)] = 1
        response_mask[b, off + s.response_start : off + len(s)] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # (B, L)
    return Batch(input_ids, attention_mask, position_ids, response_mask, offsets)


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the pad token, else EOS, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def length_batches(lengths: Sequence[int], max_pairs: int, max_tokens: int) -> list[list[int]]:
    """Group pair indices into batches of similar length (less padding), in length order.

    A batch holds at most `max_pairs` pairs and, unless it is a single pair, at most `max_tokens` padded tokens
    (2 rows per pair x its longest side).
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (lengths[j], j)):
        if current and (len(current) >= max_pairs or 2 * (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
