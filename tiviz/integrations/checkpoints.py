"""Where a training run keeps the weights to explain, whoever wrote it: tiviz's `final/`, a folder that is itself
a model (a merged LoRA, a TRL output after `save_model`), or a TRL / transformers run's latest `checkpoint-N`.
Cheap to import (no torch), so the app can list runs with it."""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_model_folder(folder: str | Path) -> bool:
    """A folder transformers can load a model from: `config.json` and safetensors weights."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def weights_folder(run: str | Path) -> Path | None:
    """The model folder of a run: `final/` (tiviz), the run folder itself, else its highest `checkpoint-N`;
    None when it holds no loadable model."""
    run = Path(run)
    if is_model_folder(run / "final"):
        return run / "final"
    if is_model_folder(run):
        return run
    steps = sorted((int(m.group(1)), d) for d in run.glob("checkpoint-*")
                   if (m := CHECKPOINT.match(d.name)) and is_model_folder(d))
    return steps[-1][1] if steps else None
