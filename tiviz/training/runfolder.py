"""The run folder: the one place that names its files and reads and writes the small ones.

    RUN/config.json        what the run was started with (TIDPOConfig under "tidpo", model, data, world size)
    RUN/status.json        state, step, total steps, pid, time; replaced atomically by the trainer
    RUN/STOP               present = a stop was requested (the trainer saves a checkpoint and returns)
    RUN/metrics.jsonl      one JSON object per logged step (`tiviz.training.metrics`)
    RUN/checkpoints/       checkpoints (`tiviz.training.checkpoint`)
    RUN/final/             the trained model, with a checksum manifest (`verify_final`)
    RUN/token_weights.parquet  with --weights-from: the scorer's attribution table the weights came from

The trainer writes them; the app, the CLI and tests read them through these functions. Importing this module is
cheap (no torch), so the app's run list does not load the trainer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from tiviz.errors import TivizError

STATUS_FILE = "status.json"
STOP_FILE = "STOP"
RUN_CONFIG = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
TOKEN_WEIGHTS = "token_weights.parquet"

State = Literal["running", "finished", "failed", "cancelled"]
"""What the trainer writes into status.json; a reader may also see no state at all (not started yet)."""


def write_json_atomic(path: Path, rec: dict[str, Any]) -> None:
    """Write `rec` to `path` through a temporary file and `os.replace`, so a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def request_stop(run_dir: str | Path) -> Path:
    """Ask a running trainer (in this or another process) to stop cleanly: it saves a checkpoint after the step
    in progress, marks the run cancelled and returns. Returns the stop file written."""
    path = Path(run_dir) / STOP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"stop requested at {time.time():.0f}\n")
    return path


def stop_requested(run_dir: str | Path) -> bool:
    """Whether a stop request is pending (the `STOP` file exists)."""
    return (Path(run_dir) / STOP_FILE).exists()


def clear_stop(run_dir: str | Path) -> None:
    """Withdraw a pending stop request (the trainer does this when it starts and when it has stopped)."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)


def write_status(run_dir: str | Path, state: State, step: int, total_steps: int, **extra: Any) -> None:
    """Replace `RUN/status.json` atomically: state, step, total steps, pid, time, and extras (message...)."""
    rec = {"state": state, "step": step, "total_steps": total_steps, "pid": os.getpid(), "updated": time.time(),
           **extra}
    write_json_atomic(Path(run_dir) / STATUS_FILE, rec)


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status.json ({state, step, total_steps, pid, updated, ...}); {} when absent, half-written or not
    a JSON object (a reader polls while the trainer writes)."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_config(run_dir: str | Path, rec: dict[str, Any]) -> None:
    """Replace `RUN/config.json` atomically."""
    write_json_atomic(Path(run_dir) / RUN_CONFIG, rec)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's `config.json` (TIDPOConfig under "tidpo", the model id, the data file and its sha256).

    Raises:
        TivizError: no config.json (not a run folder), or one that is not a JSON object.
    """
    path = Path(run_dir) / RUN_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TivizError(f"{path}: not found; is {run_dir} a tiviz training run folder?") from None
    except (OSError, ValueError) as err:
        raise TivizError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise TivizError(f"{path}: not a JSON object")
    return data


def is_run_folder(path: str | Path) -> bool:
    """Whether `path` is a tiviz training run (its config.json holds the TI-DPO settings; a model folder's
    config.json does not)."""
    try:
        return "tidpo" in read_run_config(path)
    except TivizError:
        return False


def final_dir(run_dir: str | Path) -> Path:
    """Where the run's trained model goes (`RUN/final/`)."""
    return Path(run_dir) / FINAL
