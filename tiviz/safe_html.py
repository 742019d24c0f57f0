"""The one function that turns dataset text into safe HTML; the app, the report and every plot label use it."""

from __future__ import annotations

import html
import re

# Control characters (NUL included) and lone surrogates, which no UTF-8 writer can encode.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def escape_text(text: object) -> str:
    """Escape any text for an HTML element body or a quoted attribute value.

    `&`, `<`, `>`, `"` and `'` become entities, so no tag, attribute or entity in the text can take effect
    (script tags, event handlers, `javascript:` URLs inside an attribute stay inert text); control characters,
    NUL included, and lone surrogates become U+FFFD, so browsers and XML tools see well-formed text and the
    page can always be written as UTF-8.
    """
    return _CONTROL.sub("\ufffd", html.escape("" if text is None else str(text), quote=True))


# Every ASCII punctuation mark (CommonMark lets a backslash escape exactly these).
_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")
# Where GitHub-flavoured Markdown turns plain text into a link ("https://", "www.", "a@b.c", "mailto:"): it finds
# them in the text after escapes are resolved, so a backslash cannot stop it; an invisible word joiner can.
_AUTOLINK = re.compile(r"(?i)\b(https?|mailto|xmpp|www)(?=[:.])|(?=@)")
_WORD_JOINER = "\u2060"


def escape_markdown(text: object) -> str:
    """Escape any text for a Markdown context (Streamlit's `st.markdown`, titles, captions, widget labels,
    radio options, `help=` tooltips, progress texts), so it shows literally.

    Every ASCII punctuation mark is backslash-escaped, so no link, image, emphasis, heading, HTML,
    `:colour[...]` or `:material/icon:` directive in the text can take effect; a word joiner (U+2060, invisible)
    goes after `http`, `https`, `www`, `mailto` before their `:` or `.` and before every `@`, so no URL or
    e-mail address becomes an autolink; line breaks and tabs become spaces and leading spaces go (a label is one
    line, and an indented one would be a code block); control characters
    and lone surrogates become U+FFFD, as in `escape_text`.
    """
    flat = _LINE_BREAK.sub(" ", "" if text is None else str(text)).replace("\t", " ").lstrip(" ")
    joined = _AUTOLINK.sub(lambda m: (m.group(1) or "") + _WORD_JOINER, flat)
    return _CONTROL.sub("\ufffd", _MD_PUNCTUATION.sub(r"\\\1", joined))
