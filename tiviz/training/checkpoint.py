"""Training checkpoints that survive being killed at any moment, and are checked before they are trusted.

A checkpoint is a folder `RUN/checkpoints/step-NNNNNNN/` holding

    model.safetensors       the trainable parameters (every weight, or only the LoRA adapter's)
    optimizer.pt            optimizer state_dict   (torch.save; read back with torch.load(weights_only=True))
    scheduler.pt            LR-scheduler state_dict (the same)
    rng_state_R.pt          torch / CUDA / Python / NumPy RNG states of process R (the same)
    trainer_state.json      step, epoch, total steps
    manifest.json           sha256 and size of every file above, written last

It is written into `RUN/checkpoints/.tmp-step-NNNNNNN/`, every file fsynced, then renamed into place in one
`os.rename` (atomic on POSIX) and the parent folder fsynced. A folder without a manifest, or whose files do not
match it, is not a checkpoint: `latest_good_checkpoint` skips it, with a warning, for the one before.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiviz.errors import TivizError
from tiviz.files import file_sha256, fsync

log = logging.getLogger(__name__)

FORMAT = "tiviz-checkpoint/1"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
_NAME = re.compile(r"^step-(\d+)$")
PAUSE_ENV = "TIVIZ_CHECKPOINT_PAUSE"
"""Test hook: "STEP:FILE" makes the writer stop for good right after writing FILE of checkpoint STEP (after
touching `RUN/.checkpoint-paused`), so a test can SIGKILL it mid-write at a known point."""


class CheckpointError(TivizError):
    """A checkpoint that is missing files, fails its checksums, or cannot be read."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` reads back."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rng_state: dict[str, Any] | None
    trainer_state: dict[str, Any] = field(default_factory=dict)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def _pause_hook(run_dir: Path, step: int, filename: str) -> None:
    want = os.environ.get(PAUSE_ENV)
    if want and want == f"{step}:{filename}":
        (run_dir / ".checkpoint-paused").write_text(f"{step}:{filename}\n")
        log.warning("%s=%s: pausing mid-checkpoint until killed", PAUSE_ENV, want)
        while True:
            time.sleep(3600)


# ---------------------------------------------------------------------------------------------- RNG states


def get_rng_state() -> dict[str, Any]:
    """Every RNG the training touches, as types `torch.load(weights_only=True)` reads back."""
    import numpy as np

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate())}
    np_state: Any = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *map(_num, np_state[2:])]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `get_rng_state` captured."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _num(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------- writing


def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Create the empty temporary folder of checkpoint `step` (main process only); a stale one is removed."""
    tmp = checkpoint_root(run_dir) / f".tmp-{step_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rng_state(tmp: Path, rank: int) -> None:
    """Every process writes its own RNG states into the temporary folder."""
    path = tmp / f"rng_state_{rank}.pt"
    torch.save(get_rng_state(), path)
    fsync(path, required=True)


def finish_checkpoint(
    tmp: Path,
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write the main process's files and the manifest, fsync, rename into place, prune old checkpoints.

    Args:
        tmp: the folder from `begin_checkpoint` (RNG states already in it).
        run_dir: the run folder.
        step: the optimizer step the state belongs to (steps done).
        model_state: trainable parameters by name (CPU or device tensors).
        optimizer_state, scheduler_state: `state_dict()` of each.
        trainer_state: JSON-serialisable extras (epoch, total steps...).
        keep: how many newest checkpoints to keep; 0 keeps all.
    Returns:
        the final checkpoint folder.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    fsync(tmp / MODEL_FILE, required=True)
    _pause_hook(run_dir, step, MODEL_FILE)
    for name, obj in (("optimizer.pt", optimizer_state), ("scheduler.pt", scheduler_state)):
        torch.save(obj, tmp / name)
        fsync(tmp / name, required=True)
        _pause_hook(run_dir, step, name)
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=1))
    fsync(tmp / "trainer_state.json", required=True)
    files = {
        p.name: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"format": FORMAT, "step": step, "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    fsync(tmp / MANIFEST, required=True)
    _pause_hook(run_dir, step, MANIFEST)
    fsync(tmp)
    final = checkpoint_root(run_dir) / step_name(step)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync(final.parent)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return final


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Single-process checkpoint in one call: `begin_checkpoint`, `write_rng_state`, `finish_checkpoint`."""
    tmp = begin_checkpoint(run_dir, step)
    write_rng_state(tmp, 0)
    return finish_checkpoint(
        tmp, run_dir, step, model_state=model_state, optimizer_state=optimizer_state,
        scheduler_state=scheduler_state, trainer_state=trainer_state or {}, keep=keep,
    )


# ---------------------------------------------------------------------------------------------- reading


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run (complete or not), oldest step first; temporary folders excluded."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check a checkpoint against its manifest; return the manifest.

    Raises:
        CheckpointError: no or unreadable manifest, a listed file missing, or a size or sha256 mismatch.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST} (the checkpoint was not finished)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise CheckpointError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: file {name} listed in the manifest is missing")
        if f.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{path}: {name} has {f.stat().st_size} bytes, the manifest says {info['bytes']}")
        if file_sha256(f) != info["sha256"]:
            raise CheckpointError(f"{path}: {name} fails its sha256 checksum (corrupt)")
    return manifest


def latest_good_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint`; each newer one that fails is logged as a warning
    and skipped. None when there is no good one."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s; trying the previous one", err)
            continue
        return path
    return None


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Delete the temporary folders a killed run left behind; returns what was removed."""
    root = checkpoint_root(run_dir)
    gone = [p for p in root.glob(".tmp-*") if p.is_dir()] if root.is_dir() else []
    for p in gone:
        log.warning("removing unfinished checkpoint %s", p)
        shutil.rmtree(p, ignore_errors=True)
    return gone


def load_checkpoint(path: str | Path, rank: int = 0, *, verify: bool = True) -> Checkpoint:
    """Read a checkpoint (verified against its manifest first, unless told not to).

    Tensors load on CPU; pickled state is read with `torch.load(weights_only=True)`, which refuses anything but
    tensors and plain containers. The RNG state is this rank's, or None when the checkpoint has none for it
    (resuming on more processes than it was saved from).
    """
    from safetensors.torch import load_file

    path = Path(path)
    manifest = verify_checkpoint(path) if verify else {"step": None}
    try:
        model_state = load_file(str(path / MODEL_FILE))
        optimizer_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        scheduler_state = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
        rng_path = path / f"rng_state_{rank}.pt"
        rng_state = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.exists() else None
        trainer_state = json.loads((path / "trainer_state.json").read_text())
    except Exception as err:  # torch/safetensors raise many kinds for damaged files
        raise CheckpointError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    step = int(trainer_state.get("step", manifest.get("step") or 0))
    return Checkpoint(path, step, model_state, optimizer_state, scheduler_state, rng_state, trainer_state)
