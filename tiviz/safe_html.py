"""The one function that turns dataset text into safe HTML; the app, the report and every plot label use it."""

from __future__ import annotations

import html
import re

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def escape_text(text: object) -> str:
    """Escape any text for an HTML element body or a quoted attribute value.

    `&`, `<`, `>`, `"` and `'` become entities, so no tag, attribute or entity in the text can take effect
    (script tags, event handlers, `javascript:` URLs inside an attribute stay inert text); control characters,
    NUL included, become U+FFFD so browsers and XML tools see well-formed text.
    """
    return _CONTROL.sub("\ufffd", html.escape("" if text is None else str(text), quote=True))
