"""Training jobs for the app: TI-DPO runs as separate processes (`python -m tiviz.cli train ...`), so the app
stays responsive; progress is read back from the run folder (`status.json`, `metrics.jsonl`).

One job runs at a time on the machine: a second start is refused with a message. Each job belongs to the
session that started it; other sessions neither see it nor can cancel it. Cancelling asks the trainer to stop
(`tiviz.training.runfolder.request_stop`, which lets it save what it has) and terminates the process if it does
not stop in time, or at once when the trainer offers no such request.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tiviz.errors import TivizError
from tiviz.training.runfolder import STATUS_FILE, read_status, request_stop, stop_requested

log = logging.getLogger(__name__)

LOG_FILE = "app-train.log"
RUNNING_STATES = ("starting", "running", "stopping")
STOP_GRACE_S = 60.0  # after a stop request, how long the trainer gets (one step) before it is terminated
MAIN_METRICS = ("loss", "rewards/margins", "rewards/accuracies")


class JobRefused(TivizError):
    """A training job cannot start now (another one is running, or the run folder is taken)."""


@dataclass
class TrainRequest:
    """What the Train page asks for: the trainer's CLI arguments."""

    pairs: Path
    model: str
    preset: str
    out: Path
    max_steps: int
    overrides: dict[str, Any] = field(default_factory=dict)  # TIDPOConfig fields, e.g. {"learning_rate": 1e-5}


def train_command(req: TrainRequest) -> list[str]:
    """The command line of the trainer, with the same Python as the app (so the same venv)."""
    cmd = [sys.executable, "-m", "tiviz.cli", "train", "--pairs", str(req.pairs), "--model", req.model,
           "--preset", req.preset, "--out", str(req.out), "--max-steps", str(int(req.max_steps))]
    for name, value in req.overrides.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            cmd += [flag, str(value)]
    return cmd


def trainer_available() -> bool:
    """Whether this build has the trainer (and its `tiviz train` command)."""
    import importlib.util

    try:
        return (importlib.util.find_spec("tiviz.training.trainer") is not None
                and importlib.util.find_spec("tiviz.commands.train") is not None)
    except ModuleNotFoundError:
        return False


@dataclass
class Job:
    """One training process and the run folder it writes."""

    owner: str  # the session that started it
    run_dir: Path
    process: subprocess.Popen
    command: list[str]
    started: float = field(default_factory=time.time)
    stop_requested: float | None = None

    @property
    def name(self) -> str:
        return self.run_dir.name

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self) -> dict[str, Any]:
        """The trainer's status.json, with the process's own view added (state 'exited' when it ended without
        writing a final state) and the exit code."""
        st = read_status(self.run_dir)
        code = self.process.poll()
        st["returncode"] = code
        if code is not None and st.get("state") in (None, *RUNNING_STATES):
            st["state"] = "cancelled" if self.stop_requested else ("exited" if code == 0 else "failed")
        elif code is None and st.get("state") is None:
            st["state"] = "starting"
        if self.stop_requested and code is None:
            st["state"] = "stopping"
        return st

    def metrics(self) -> pd.DataFrame:
        return read_metrics(self.run_dir)

    def log_tail(self, n_chars: int = 4000) -> str:
        path = self.run_dir / LOG_FILE
        if not path.exists():
            return ""
        data = path.read_bytes()[-n_chars:]
        return data.decode("utf-8", errors="replace")

    def request_cancel(self) -> str:
        """Ask the trainer to stop; returns how: "request" (it stops after its current step, saving a
        checkpoint), "terminate" (no trainer loop yet), or "finished"."""
        if not self.alive():
            return "finished"
        self.stop_requested = self.stop_requested or time.time()
        if not (self.run_dir / STATUS_FILE).exists():
            self.process.terminate()  # still loading: nothing to save yet
            return "terminate"
        request_stop(self.run_dir)
        return "request"

    def enforce_stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Follow up a stop request: repeat it if the trainer cleared it while starting up, terminate a process
        that has not stopped within `grace_s`, kill it 10 s later."""
        if self.stop_requested is None or not self.alive():
            return
        waited = time.time() - self.stop_requested
        if waited > grace_s + 10:
            self.process.kill()
        elif waited > grace_s:
            self.process.terminate()
        elif not stop_requested(self.run_dir) and read_status(self.run_dir).get("state") == "running":
            request_stop(self.run_dir)


class JobManager:
    """The machine's training jobs, shared by every session of one app process (held by st.cache_resource)."""

    def __init__(self, max_running: int = 1) -> None:
        self.max_running = max_running
        self._jobs: dict[str, Job] = {}  # owner -> latest job
        self._lock = threading.Lock()

    def start(self, owner: str, req: TrainRequest) -> Job:
        """Start a training process for `owner`; refuses while `max_running` jobs run or if the folder exists."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.alive()]
            if len(running) >= self.max_running:
                mine = any(j.owner == owner for j in running)
                raise JobRefused(
                    "a training job is already running" + (" (yours: cancel it or wait for it to finish)" if mine
                                                           else " (started in another session); try again when "
                                                           "it has finished"))
            if req.out.exists():
                raise JobRefused(f"the run folder {req.out.name!r} already exists; choose another run name")
            req.out.mkdir(parents=True)
            cmd = train_command(req)
            with open(req.out / LOG_FILE, "wb") as logfh:
                proc = subprocess.Popen(cmd, stdout=logfh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(Path(__file__).resolve().parent.parent),
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
            job = Job(owner=owner, run_dir=req.out, process=proc, command=cmd)
            self._jobs[owner] = job
            log.info("started training %s (pid %d): %s", req.out.name, proc.pid, " ".join(cmd))
            return job

    def job_of(self, owner: str) -> Job | None:
        """The latest job this session started (running or not); other sessions' jobs are not visible."""
        with self._lock:
            return self._jobs.get(owner)

    def forget(self, owner: str) -> None:
        """Drop a finished job from the session's view."""
        with self._lock:
            job = self._jobs.get(owner)
            if job is not None and not job.alive():
                del self._jobs[owner]

    def running_elsewhere(self, owner: str) -> set[str]:
        """Run names of jobs in progress that other sessions own (hidden from this session's run list)."""
        with self._lock:
            return {j.name for o, j in self._jobs.items() if o != owner and j.alive()}

    def any_running(self) -> bool:
        with self._lock:
            return any(j.alive() for j in self._jobs.values())

    def shutdown(self) -> None:
        """Terminate every running job (tests and app shutdown)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            if j.alive():
                j.process.terminate()
                try:
                    j.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    j.process.kill()


# ---------------------------------------------------------------------------------------------- run folders


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """The run's metrics.jsonl as a frame (one row per logged step); a partial last line is skipped."""
    from tiviz.training.metrics import metrics_frame

    return metrics_frame(Path(run_dir))


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    state: str
    step: int | None
    total_steps: int | None
    finished: bool  # has loadable final weights and is not running
    modified: float


def list_runs(root: Path, exclude: set[str] | None = None) -> list[RunInfo]:
    """Run folders under `root`, newest first; `exclude` hides folders (other sessions' jobs in progress)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for d in root.iterdir():
        if not d.is_dir() or d.name.startswith(".") or d.is_symlink() or (exclude and d.name in exclude):
            continue
        status = read_status(d)
        final = d / "final"
        has_final = (final / "config.json").exists() and any(final.glob("*.safetensors"))
        state = str(status.get("state") or ("finished" if has_final else "unknown"))
        runs.append(RunInfo(name=d.name, path=d, state=state, step=_int(status.get("step")),
                            total_steps=_int(status.get("total_steps")),
                            finished=has_final and state not in RUNNING_STATES, modified=d.stat().st_mtime))
    return sorted(runs, key=lambda r: r.modified, reverse=True)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
