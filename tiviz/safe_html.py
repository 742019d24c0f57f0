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
