"""Token attribution: methods by string id, one tidy table out.

The names load on first use, so that `tiviz.scoring` can import the pure target functions of this package without
importing `attribute` (which itself scores through `tiviz.scoring`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "attribute": "tiviz.attribution.core",
    "DEFAULT_METHODS": "tiviz.attribution.methods",
    "METHODS": "tiviz.attribution.methods",
    "list_methods": "tiviz.attribution.methods",
    "resolve_methods": "tiviz.attribution.methods",
}

__all__ = ["DEFAULT_METHODS", "METHODS", "attribute", "list_methods", "resolve_methods"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiviz.attribution' has no attribute {name!r}")
