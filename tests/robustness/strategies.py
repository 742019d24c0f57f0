"""Hypothesis strategies and settings shared by the fuzz tests: nasty text, records, and damaged files."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz(n: int) -> settings:
    """Bounded, reproducible fuzzing for CI: `n` examples, fixed seed, no deadline, no example database."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Pieces real data is full of, and that break naive offset or escaping code.
NASTY = [
    "", " ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u200b", "\u200d", "\ufeff", "\u2028", "\u2029", "\x85",
    "\u202e", "\u200f", "e\u0301", "\u0301", "Z\u0351\u0363\u0364", "👩\u200d👩\u200d👧\u200d👦", "👍🏽",
    "🇫🇷", "👨🏿\u200d🦲", "😊", "שלום", "مرحبا", "日本語", "𝕏", "ﬁ", "İ", "ß", "ǅ", "Ａ", "\U0010ffff",
    "<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>", "<script>alert(1)</script>", "&amp;", '"', "'",
    "\\", "\x7f", "\x1b[31m", ",", ";", "#", "NA", "null", "NaN",
]
# Everything a Python str may hold except lone surrogates (which valid UTF-8 data cannot contain).
valid_char = st.characters(exclude_categories=("Cs",))
valid_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(valid_char, max_size=12)), max_size=8).map("".join)
# Lone surrogates included: what a JSON "\ud83d" escape, or in-memory data, can hand over.
any_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=12)), max_size=8).map("".join)
# Non-empty, NUL-free text: what the loaders accept for prompt / chosen / rejected.
field_text = valid_text.filter(lambda s: s.strip() != "" and "\x00" not in s)

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), any_text)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["role", "content", "x"]), inner, max_size=3)),
    max_leaves=6)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": field_text})


@st.composite
def records(draw: st.DrawFn) -> dict:
    """A record that is often almost valid: each field is good text, messages, or an arbitrary JSON value."""
    rec: dict = {}
    for key in ("id", "prompt", "chosen", "rejected", "rationale_chosen", "rationale_rejected", "category"):
        kind = draw(st.sampled_from(["good", "good", "messages", "junk", "absent"]))
        if kind == "good":
            rec[key] = draw(field_text)
        elif kind == "messages":
            rec[key] = draw(st.lists(message, min_size=0, max_size=2))
        elif kind == "junk":
            rec[key] = draw(json_value)
    return rec


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """A valid file's bytes cut short, with bytes flipped, spliced or dropped: what a crash or a bad copy makes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        if op == "truncate":
            del out[at:]
        elif op == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at : at + draw(st.integers(1, 16))]
    return bytes(out)
