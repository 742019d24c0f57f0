"""tiviz: which tokens drive a language model's preference, and TI-DPO alignment guided by them.

Importing tiviz is cheap: torch and transformers load only when a function that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "attribute": "tiviz.attribution.core",
    "list_methods": "tiviz.attribution.methods",
    "METHODS": "tiviz.attribution.methods",
    "AttributionConfig": "tiviz.config",
    "PreferencePair": "tiviz.data",
    "load_pairs": "tiviz.data",
    "load_model": "tiviz.models",
    "LoadedModel": "tiviz.models",
    "Scorer": "tiviz.scoring",
    "make_scorer": "tiviz.scoring",
    "load_scorer": "tiviz.scoring",
    "score_pairs": "tiviz.scoring",
    "read_table": "tiviz.table",
    "write_table": "tiviz.table",
    "write_report": "tiviz.report",
    "export_table": "tiviz.report",
    "compare_tables": "tiviz.compare",
    "evaluate": "tiviz.evaluation",
    "read_scores": "tiviz.evaluation",
    "train": "tiviz.training",
    "TIDPOConfig": "tiviz.training",
    "TivizError": "tiviz.errors",
    "DataError": "tiviz.errors",
    "ConfigError": "tiviz.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiviz' has no attribute {name!r}")
