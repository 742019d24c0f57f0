"""TI-DPO training: losses and config (pure), per-step token weights, the trainer, checkpoints, metrics.

Importing this package is cheap; torch loads with the first name that needs it:

    from tiviz.training import TIDPOTrainer, config_from_preset, train, request_stop, read_status
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TIDPOConfig": "tiviz.training.config",
    "config_from_preset": "tiviz.training.config",
    "list_presets": "tiviz.training.config",
    "PRESETS": "tiviz.training.config",
    "TIDPOTrainer": "tiviz.training.trainer",
    "TrainResult": "tiviz.training.trainer",
    "ProgressEvent": "tiviz.training.trainer",
    "train": "tiviz.training.trainer",
    "request_stop": "tiviz.training.runfolder",
    "read_status": "tiviz.training.runfolder",
    "read_run_config": "tiviz.training.runfolder",
    "evaluate_policy": "tiviz.training.evaluation",
    "read_metrics": "tiviz.training.metrics",
    "metrics_frame": "tiviz.training.metrics",
    "training_weights": "tiviz.training.used_weights",
    "latest_good_checkpoint": "tiviz.training.checkpoint",
    "list_checkpoints": "tiviz.training.checkpoint",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiviz.training' has no attribute {name!r}")
