"""Training checkpoints that survive being killed at any moment, and are checked before they are trusted.

The trainer's checkpoints are written by `accelerate` (`Accelerator.save_state`), so the model and optimizer are
saved the way the run is distributed: whole under one process or DDP, per-rank shards under FSDP or DeepSpeed.
tiviz adds what accelerate lacks: an atomic publish, a checksum manifest, and the fallback to the previous good
checkpoint. A checkpoint is a folder `RUN/checkpoints/step-NNNNNNN/` holding

    (accelerate's files)    model.safetensors, optimizer.bin, random_states_R.pkl (or FSDP / DeepSpeed shards)
    scheduler.pt            LR-scheduler state_dict (torch.save; read back with torch.load(weights_only=True))
    trainer_state.json      step, epoch, total steps, world size
    manifest.json           sha256 and size of every other file (subfolders included), written last

`save_checkpoint` / `load_checkpoint` keep a simpler single-process layout for plain state dicts
(model.safetensors, optimizer.pt, scheduler.pt, rng_state_0.pt), under the same manifest and publish.

It is written into `RUN/checkpoints/.tmp-step-NNNNNNN/`, every file fsynced, then renamed into place in one
`os.rename` (atomic on POSIX) and the parent folder fsynced. A folder without a manifest, with a malformed one,
with files that do not match it, or with files it does not list, is not a checkpoint: `latest_good_checkpoint`
skips it, with a warning, for the one before.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiviz.data import file_sha256  # noqa: F401  (checkpoint users check files with it)
from tiviz.training.runfolder import (
    CHECKPOINTS,
    MANIFEST,
    CheckpointError,
    check_files,
    fsync_path,
    write_manifest,
)

log = logging.getLogger(__name__)

FORMAT = "tiviz-checkpoint/1"
MODEL_FILE = "model.safetensors"
SCHEDULER_FILE = "scheduler.pt"
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")


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
    """Write plain state dicts (single-process layout) into `tmp`, then `publish_checkpoint` it.

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

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model_state.items()}
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / SCHEDULER_FILE)
    return publish_checkpoint(tmp, run_dir, step, trainer_state=trainer_state, keep=keep)


def publish_checkpoint(tmp: Path, run_dir: str | Path, step: int, *, trainer_state: dict[str, Any],
                       keep: int = 2) -> Path:
    """Write trainer_state.json and the manifest of everything in `tmp`, fsync, rename into place, prune old
    checkpoints (main process only, after every process has written its files). Returns the final folder."""
    run_dir = Path(run_dir)
    (tmp / TRAINER_STATE).write_text(json.dumps({"step": step, **trainer_state}, indent=1))
    write_manifest(tmp, FORMAT, step=step)
    final = checkpoint_root(run_dir) / step_name(step)
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_path(final.parent)
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


# ---------------------------------------------------------------------------------------------- accelerate


def save_state_checkpoint(
    accelerator: Any,
    run_dir: str | Path,
    step: int,
    *,
    scheduler_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path | None:
    """Checkpoint a prepared model and optimizer with `accelerator.save_state` (every process must call it: under
    FSDP / DeepSpeed each writes its shards), then manifest and publish it on the main process.

    Frozen parameters (a LoRA run's base weights) are left out of the model file: they come from the base model.
    The scheduler is saved by tiviz, not accelerate (the trainer does not prepare it; see `TIDPOTrainer`).
    Returns the checkpoint folder on the main process, None on the others.
    """
    tmp = checkpoint_root(run_dir) / f".tmp-{step_name(step)}"
    if accelerator.is_main_process:
        begin_checkpoint(run_dir, step)
    accelerator.wait_for_everyone()
    handle = accelerator.register_save_state_pre_hook(_drop_frozen)
    try:
        accelerator.save_state(str(tmp))
    finally:
        handle.remove()
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        torch.save(scheduler_state, tmp / SCHEDULER_FILE)
        path = publish_checkpoint(tmp, run_dir, step, trainer_state=trainer_state, keep=keep)
    accelerator.wait_for_everyone()
    return path


def _drop_frozen(models: list[Any], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
    """`save_state` pre-hook: remove frozen parameters from the state dicts about to be written, tied copies
    included (found by storage), in place so that accelerate still de-duplicates the rest."""
    for model, state in zip(models, weights, strict=False):
        frozen = {p.data_ptr() for p in model.parameters() if not p.requires_grad}
        for name in [k for k, v in state.items() if v.data_ptr() in frozen]:
            del state[name]


def load_state_checkpoint(accelerator: Any, path: str | Path) -> dict[str, Any]:
    """Verify a checkpoint of `save_state_checkpoint`, restore model, optimizer and this process's RNG with
    `accelerator.load_state`, and return {"trainer_state": ..., "scheduler_state": ...}.

    Raises:
        CheckpointError: the checkpoint fails `verify_checkpoint`, its parameters are not the model's (another
            model, or another --use-lora setting), or it cannot be read.
    """
    from accelerate.utils import DistributedType

    path = Path(path)
    verify_checkpoint(path)
    if (path / "optimizer.pt").exists():
        raise CheckpointError(f"{path}: a checkpoint of the plain layout (`save_checkpoint`, also written by tiviz "
                              "before its checkpoints used accelerate), which the trainer cannot resume. Fix: "
                              "start a new run")
    kwargs: dict[str, Any] = {}
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        for model in accelerator._models:  # the file holds the trainable parameters only: check them by name
            _check_names(path, model)
        kwargs["strict"] = False
    if not (path / f"random_states_{accelerator.process_index}.pkl").exists():
        log.warning("%s has no RNG state for process %d; sampling will differ from the original run", path,
                    accelerator.process_index)
    try:
        accelerator.load_state(str(path), **kwargs)
        scheduler_state = torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True)
        trainer_state = json.loads((path / TRAINER_STATE).read_text())
    except Exception as err:  # torch/safetensors/accelerate raise many kinds for damaged or foreign files
        raise CheckpointError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    return {"trainer_state": trainer_state, "scheduler_state": scheduler_state}


def _check_names(path: Path, model: Any) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path / MODEL_FILE), framework="pt") as fh:
            saved = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read {MODEL_FILE} ({type(err).__name__}: {err})") from err
    want = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(want) - set(saved))[:3], sorted(set(saved) - set(model.state_dict()))[:3]
    if missing or extra:
        raise CheckpointError(
            f"{path}: parameters do not match the model (missing {missing}, unexpected {extra}). Fix: resume with "
            "the same model and --use-lora setting the run started with")
    for name, shape in want.items():
        if saved[name] != shape:
            raise CheckpointError(f"{path}: {name} has shape {saved[name]}, the model {shape}")


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

    The manifest must list at least one file, each with its size and sha256, and every file in the folder: a file
    it does not list would be loaded unchecked.

    Raises:
        CheckpointError: no, unreadable or malformed manifest, a listed file missing, a size or sha256 mismatch,
            or a file the manifest does not list.
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST} (the checkpoint was not finished)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {MANIFEST} is not a {FORMAT} manifest")
    check_files(path, manifest.get("files"), error=CheckpointError)
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
        scheduler_state = torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True)
        rng_path = path / f"rng_state_{rank}.pt"
        rng_state = torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.exists() else None
        trainer_state = json.loads((path / TRAINER_STATE).read_text())
    except Exception as err:  # torch/safetensors raise many kinds for damaged files
        raise CheckpointError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    step = int(trainer_state.get("step", manifest.get("step") or 0))
    return Checkpoint(path, step, model_state, optimizer_state, scheduler_state, rng_state, trainer_state)
