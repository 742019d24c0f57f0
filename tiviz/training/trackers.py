"""Experiment trackers (TensorBoard, Weights & Biases, trackio, MLflow) through `accelerate`'s trackers, with the
names a TRL run shows there: `train/loss`, `train/rewards/margins`, ..., `eval/accuracy`. `RUN/metrics.jsonl`
is written either way (the app reads it).

    tiviz train ... --report-to tensorboard        # events in RUN/logs/tiviz/; tensorboard --logdir RUN/logs
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tiviz.errors import ConfigError

PROJECT = "tiviz"
LOG_DIR = "logs"
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",),
            "mlflow": ("mlflow",)}
"""Tracker -> the packages that provide it (any one is enough)."""


def require_trackers(names: list[str]) -> None:
    """Raise a `ConfigError` naming the tracker and the package to install when one is missing (accelerate
    would otherwise drop it with a warning and log nothing)."""
    for name in names:
        if not any(importlib.util.find_spec(p) is not None for p in PACKAGES[name]):
            raise ConfigError("report_to", name, f"an installed tracker: pip install {PACKAGES[name][0]}")


def project_config(run_dir: Path) -> Any:
    """Where local trackers write: `RUN/logs/` (TensorBoard: `RUN/logs/tiviz/`)."""
    from accelerate.utils import ProjectConfiguration

    return ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / LOG_DIR))


def hparams(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as tracker hyperparameters: scalars only (None becomes "none")."""
    return {k: ("none" if v is None else v) for k, v in config.items() if isinstance(v, str | int | float | bool)
            or v is None}


def tracker_record(metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as a TRL (transformers Trainer) run logs them to trackers: `train/<name>` for training
    metrics, `eval/...` as it is; the step is passed separately, so `step` itself is dropped."""
    return {(k if k.startswith("eval/") else f"train/{k}"): v for k, v in metrics.items()
            if k != "step" and isinstance(v, int | float)}
