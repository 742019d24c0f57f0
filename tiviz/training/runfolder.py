"""The run folder: the one place that names its files and reads and writes the small ones.

    RUN/config.json        what the run was started with (TIDPOConfig under "tidpo", model, data, world size)
    RUN/status.json        state, step, total steps, pid, time; replaced atomically by the trainer
    RUN/STOP               present = a stop was requested (the trainer saves a checkpoint and returns)
    RUN/metrics.jsonl      one JSON object per logged step (`tiviz.training.metrics`)
    RUN/checkpoints/       checkpoints (`tiviz.training.checkpoint`)
    RUN/final/             the trained model, with a checksum manifest (`verify_model_folder`)
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
MANIFEST = "manifest.json"  # in each checkpoint and in final/: sha256 and size of every other file
FINAL_FORMAT = "tiviz-model/1"

State = Literal["running", "finished", "failed", "cancelled"]
"""What the trainer writes into status.json; a reader may also see no state at all (not started yet)."""


class CheckpointError(TivizError):
    """A checkpoint that is missing files, fails its checksums, has a malformed manifest, or cannot be read."""


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
    return read_json_object(Path(run_dir) / STATUS_FILE)


def read_json_object(path: Path) -> dict[str, Any]:
    """A small JSON file another process replaces while we read; {} when absent, half-written or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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


def check_resume_model(run_dir: str | Path, model_id: str) -> None:
    """Refuse to resume a run with another model than the one it started with (compared as folders when both
    name one, else as ids); a folder without config.json has nothing to compare with.

    Raises:
        TivizError: the model differs from the one in `RUN/config.json`.
    """
    if not (Path(run_dir) / RUN_CONFIG).exists():
        return
    saved = read_run_config(run_dir).get("model")
    if not saved or _same_model(str(saved), model_id):
        return
    raise TivizError(f"{Path(run_dir) / RUN_CONFIG}: the run was started with model {saved!r}, not {model_id!r}. "
                     f"Fix: resume with --model {saved} (or leave --model out), or start a new run with --out")


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


# ---------------------------------------------------------------------------------------------- manifests


def fsync_path(path: Path) -> None:
    """Flush a file's (or, after a rename, a folder's) data to disk (`tiviz.table`'s one helper)."""
    from tiviz.table import _fsync

    _fsync(path)


def write_manifest(folder: Path, fmt: str, **extra: Any) -> dict[str, Any]:
    """Fsync every file under `folder` and write `MANIFEST` with the sha256 and size of each (relative paths,
    subfolders included), last; return it. Checkpoints and `RUN/final/` are both published this way."""
    from tiviz.data import file_sha256

    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p != folder / MANIFEST:
            fsync_path(p)
            files[p.relative_to(folder).as_posix()] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    manifest = {"format": fmt, **extra, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    fsync_path(folder / MANIFEST)
    fsync_path(folder)
    return manifest


def check_files(folder: Path, files: Any, *, error: type[TivizError], checksums: bool = True) -> None:
    """Check `folder` against a manifest's `files` ({relative path: {"sha256", "bytes"}}): well formed, not
    empty, every listed file present with its size (and checksum, unless `checksums` is False), and no file left
    unlisted, which would be loaded unchecked. One check for checkpoints and for `RUN/final/`.

    Raises:
        error: naming the folder, the file and what is wrong.
    """
    from tiviz.data import file_sha256

    if not isinstance(files, dict) or not files:
        raise error(f"{folder}: {MANIFEST} field 'files' must be a non-empty object of file name -> "
                    f"{{sha256, bytes}}, found {json.dumps(files)[:80]}")
    for name, info in files.items():
        if not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or \
                not isinstance(info.get("sha256"), str):
            raise error(f"{folder}: {MANIFEST} entry {name!r} needs an integer 'bytes' and a string 'sha256', "
                        f"found {json.dumps(info)[:80]}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise error(f"{folder}: {MANIFEST} entry {name!r} points outside the folder")
        f = folder / name
        if not f.is_file():
            raise error(f"{folder}: file {name} listed in the manifest is missing")
        if f.stat().st_size != info["bytes"]:
            raise error(f"{folder}: {name} has {f.stat().st_size} bytes, the manifest says {info['bytes']} "
                        "(truncated or replaced)")
        if checksums and file_sha256(f) != info["sha256"]:
            raise error(f"{folder}: {name} fails its sha256 checksum (corrupt)")
    unlisted = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != MANIFEST and p.relative_to(folder).as_posix() not in files]
    if unlisted:
        raise error(f"{folder}: {', '.join(unlisted[:3])} not listed in the manifest (would load unchecked)")


def check_safetensors(path: Path) -> None:
    """Check a safetensors file's frame without reading its tensors: an 8-byte header length, a JSON header,
    and a file exactly as long as the header's last data offset says (a truncated download or copy is not).

    Raises:
        ModelError: naming the file and what is wrong.
    """
    from tiviz.errors import ModelError

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or n > min(size - 8, 100_000_000):
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(fh.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise ModelError(f"{path}: not a readable safetensors file ({err}). Fix: copy or save the model "
                         "again") from None
    want = 8 + n + max(ends, default=0)
    if size != want:
        raise ModelError(f"{path}: {size} bytes, its header needs {want} (truncated or damaged). Fix: copy or "
                         "save the model again")


def verify_model_folder(folder: str | Path, *, checksums: bool = True) -> None:
    """Check a model folder before it is loaded or listed: against its manifest when it has one (`RUN/final/`
    has), and every *.safetensors file's frame (`check_safetensors`) in any case. `checksums=False` skips the
    sha256 pass (sizes and frames only), for listings that run on every page draw.

    Raises:
        ModelError: a damaged or incomplete folder, naming the file.
    """
    from tiviz.errors import ModelError

    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelError(f"{folder / MANIFEST}: unreadable ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FINAL_FORMAT:
            raise ModelError(f"{folder / MANIFEST}: not a {FINAL_FORMAT} manifest")
        check_files(folder, manifest.get("files"), error=ModelError, checksums=checksums)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)
