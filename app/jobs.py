"""Training jobs for the app: TI-DPO runs as separate processes (`python -m tiviz.cli train ...`), so the app
stays responsive; progress is read back from the run folder (`status.json`, `metrics.jsonl`).

One job runs at a time on the machine: a second start is refused with a message. Each job belongs to the
session that started it; other sessions neither see it nor can cancel it. Cancelling asks the trainer to stop
(`tiviz.training.runfolder.request_stop`, which lets it save what it has) and terminates the process if it does
not stop in time (`Job.enforce_stop`, run by a watcher thread, so a cancel from any page is followed up).

Jobs do not outlive the app unseen. Each runs in its own process group (the `accelerate launch` workers with it)
and writes `RUN/job.json` (pid, start time, owner). When the app exits (Streamlit stops on SIGTERM and Ctrl-C;
`atexit`) its jobs are asked to stop and then terminated. When the app was killed instead, the next app adopts
the jobs still running (pid and start time match, so a reused pid is not mistaken for one): they count against
the one-job limit and any session sees them and may cancel them, their owner's session being gone.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from tiviz.errors import ModelError, TivizError
from tiviz.training.runfolder import (
    STATUS_FILE,
    final_dir,
    read_json_object,
    read_status,
    request_stop,
    stop_requested,
    verify_model_folder,
    write_json_atomic,
)

log = logging.getLogger(__name__)

LOG_FILE = "app-train.log"
JOB_FILE = "job.json"  # pid, start time, owner and command of the app's trainer process
RUNNING_STATES = ("starting", "running", "stopping")
STOP_GRACE_S = 60.0  # after a stop request, how long the trainer gets (one step) before it is terminated
KILL_AFTER_S = 10.0  # after SIGTERM, how long before SIGKILL
EXIT_GRACE_S = 10.0  # when the app exits: how long the trainer gets to stop by itself before it is terminated
WATCH_EVERY_S = 2.0
ADOPTED = "(started before the app restarted)"  # the owner of an adopted job
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


@dataclass
class Job:
    """One training process (the leader of its own process group) and the run folder it writes."""

    owner: str  # the session that started it, or ADOPTED
    run_dir: Path
    pid: int
    create_time: float  # psutil's: with the pid, names the process (pids are reused)
    command: list[str]
    process: subprocess.Popen | None = None  # None for a job adopted after an app restart
    started: float = field(default_factory=time.time)
    stop_requested: float | None = None

    @classmethod
    def of(cls, owner: str, run_dir: Path, process: subprocess.Popen, command: list[str]) -> Job:
        """A job for a process this app started (with `start_new_session=True`); writes `RUN/job.json`."""
        job = cls(owner, run_dir, process.pid, _create_time(process.pid), command, process)
        write_json_atomic(run_dir / JOB_FILE, {"pid": job.pid, "create_time": job.create_time, "owner": owner,
                                               "command": command, "started": job.started, "app_pid": os.getpid()})
        return job

    @classmethod
    def adopt(cls, run_dir: Path) -> Job | None:
        """The job of `RUN/job.json` if its process still runs (same pid and start time), else None."""
        rec = read_json_object(run_dir / JOB_FILE)
        try:
            pid, created = int(rec["pid"]), float(rec["create_time"])
        except (KeyError, TypeError, ValueError):
            return None
        if not _same_process(pid, created):
            return None
        return cls(ADOPTED, run_dir, pid, created, [str(c) for c in rec.get("command") or []],
                   started=float(rec.get("started") or created))

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def adopted(self) -> bool:
        return self.process is None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _same_process(self.pid, self.create_time)

    def returncode(self) -> int | None:
        """The exit code; None while running, and for an adopted job (not this app's child)."""
        return self.process.poll() if self.process is not None else None

    def status(self) -> dict[str, Any]:
        """The trainer's status.json, with the process's own view added (state 'exited' when it ended without
        writing a final state) and the exit code."""
        st = read_status(self.run_dir)
        alive, code = self.alive(), self.returncode()
        st["returncode"] = code
        st["adopted"] = self.adopted
        if not alive and st.get("state") in (None, *RUNNING_STATES):
            st["state"] = "cancelled" if self.stop_requested else (
                "exited" if code == 0 else "failed" if code is not None else "ended")
        elif alive and st.get("state") is None:
            st["state"] = "starting"
        if self.stop_requested and alive:
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

    def signal(self, sig: int) -> None:
        """Send `sig` to the job's whole process group (the trainer and any workers it launched); to the process
        alone when it does not lead a group of its own."""
        try:
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def request_cancel(self) -> str:
        """Ask the trainer to stop; returns how: "request" (it stops after its current step, saving a
        checkpoint), "terminate" (no trainer loop yet), or "finished"."""
        if not self.alive():
            return "finished"
        self.stop_requested = self.stop_requested or time.time()
        if not (self.run_dir / STATUS_FILE).exists():
            self.signal(signal.SIGTERM)  # still loading: nothing to save yet
            return "terminate"
        request_stop(self.run_dir)
        return "request"

    def enforce_stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Follow up a stop request: repeat it if the trainer cleared it while starting up, terminate a process
        group that has not stopped within `grace_s`, kill it `KILL_AFTER_S` later."""
        if self.stop_requested is None or not self.alive():
            return
        waited = time.time() - self.stop_requested
        if waited > grace_s + KILL_AFTER_S:
            self.signal(signal.SIGKILL)
        elif waited > grace_s:
            self.signal(signal.SIGTERM)
        elif not stop_requested(self.run_dir) and read_status(self.run_dir).get("state") == "running":
            request_stop(self.run_dir)


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _same_process(pid: int, create_time: float) -> bool:
    """Whether `pid` is still the process that started at `create_time` (and not a zombie)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class JobManager:
    """The machine's training jobs, shared by every session of one app process (held by st.cache_resource).

    Args:
        max_running: jobs allowed at once.
        runs_dir: where runs live; jobs still running there from a previous app process are adopted.
        watch: follow up stop requests from a background thread (`Job.enforce_stop` every `WATCH_EVERY_S`).
    """

    def __init__(self, max_running: int = 1, runs_dir: Path | None = None, watch: bool = True) -> None:
        self.max_running = max_running
        self._jobs: dict[str, Job] = {}  # owner -> latest job
        self._lock = threading.Lock()
        for job_file in sorted(Path(runs_dir).glob(f"*/{JOB_FILE}")) if runs_dir else []:
            job = Job.adopt(job_file.parent)
            if job is not None:
                log.warning("adopting training job %s (pid %d), started before this app", job.name, job.pid)
                self._jobs[f"{ADOPTED}/{job.name}"] = job
        atexit.register(self.shutdown)
        if watch:
            threading.Thread(target=self._watch, name="tiviz-job-watcher", daemon=True).start()

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
                                        cwd=str(Path(__file__).resolve().parent.parent), start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
            job = Job.of(owner, req.out, proc, cmd)
            self._jobs[owner] = job
            log.info("started training %s (pid %d): %s", req.out.name, proc.pid, " ".join(cmd))
            return job

    def job_of(self, owner: str) -> Job | None:
        """The latest job this session started (running or not), else a running adopted job (whose session is
        gone); other sessions' jobs are not visible."""
        with self._lock:
            mine = self._jobs.get(owner)
            if mine is not None:
                return mine
            return next((j for j in self._jobs.values() if j.adopted and j.alive()), None)

    def cancel(self, owner: str) -> str:
        """Cancel `owner`'s running job (or an adopted one), from any page; returns `Job.request_cancel`'s answer,
        or "none" when there is nothing of theirs to cancel."""
        job = self.job_of(owner)
        if job is None or not job.alive():
            return "none"
        return job.request_cancel()

    def running_elsewhere(self, owner: str) -> set[str]:
        """Run names of jobs in progress that other sessions own (hidden from this session's run list)."""
        with self._lock:
            return {j.name for o, j in self._jobs.items() if o != owner and j.alive()}

    def any_running(self) -> bool:
        with self._lock:
            return any(j.alive() for j in self._jobs.values())

    def enforce_stops(self) -> None:
        """`Job.enforce_stop` for every job (the watcher thread calls it)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.enforce_stop()

    def _watch(self) -> None:
        while True:  # a daemon thread: it ends with the app
            time.sleep(WATCH_EVERY_S)
            try:
                self.enforce_stops()
            except Exception:  # never let the watcher die silently
                log.exception("job watcher")

    def shutdown(self, grace_s: float = EXIT_GRACE_S) -> None:
        """End every running job (app exit, tests): ask each trainer to stop (it checkpoints after its step),
        wait up to `grace_s`, then terminate their process groups and kill what is left `KILL_AFTER_S` later."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.alive()]
        for j in jobs:
            log.warning("app exiting: stopping training job %s (pid %d)", j.name, j.pid)
            j.request_cancel()
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, KILL_AFTER_S)):
            deadline = time.monotonic() + wait_s
            while any(j.alive() for j in jobs) and time.monotonic() < deadline:
                time.sleep(0.1)
            for j in jobs:
                if j.alive():
                    j.signal(sig)
        for j in jobs:
            if j.process is not None:
                try:
                    j.process.wait(timeout=KILL_AFTER_S)
                except subprocess.TimeoutExpired:
                    log.error("training job %s (pid %d) did not end", j.name, j.pid)


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
    problem: str | None = None  # why final/ cannot be loaded (state "damaged"), e.g. a truncated weights file


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
        final = final_dir(d)
        has_final = (final / "config.json").exists() and any(final.glob("*.safetensors"))
        state = str(status.get("state") or ("finished" if has_final else "unknown"))
        problem = None
        if state in RUNNING_STATES and (d / JOB_FILE).exists() and Job.adopt(d) is None:
            state = "interrupted"  # the app's trainer died without saying so (killed): resume it with --resume
        if has_final and state not in RUNNING_STATES:
            try:
                verify_model_folder(final, checksums=False)  # sizes and frames: cheap enough for every draw
            except ModelError as err:
                problem, state, has_final = str(err), "damaged", False
        runs.append(RunInfo(name=d.name, path=d, state=state, step=_int(status.get("step")),
                            total_steps=_int(status.get("total_steps")),
                            finished=has_final and state not in RUNNING_STATES, modified=d.stat().st_mtime,
                            problem=problem))
    return sorted(runs, key=lambda r: r.modified, reverse=True)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
