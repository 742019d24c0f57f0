"""Training jobs neither outlive the app unseen nor escape the one-job limit (issue 13 item 8).

The trainer is stood in for by a small script that behaves like one (status.json, honours STOP, starts a worker
process as `accelerate launch` does) or refuses to stop ("stubborn"), so the tests run in seconds."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from app import jobs
from tiviz.testing import wait_for

from .test_kill_resume import free_port

ROOT = Path(__file__).resolve().parents[2]
FAKE_TRAINER = r'''
import json, signal, subprocess, sys, time
from pathlib import Path
run, mode = Path(sys.argv[1]), sys.argv[2]

def on_term(signum, frame):
    (run / "got-sigterm").write_text("1")
    if mode != "stubborn":
        sys.exit(143)

signal.signal(signal.SIGTERM, on_term)
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
(run / "worker.pid").write_text(str(worker.pid))
(run / "status.json").write_text(json.dumps({"state": "running", "step": 0, "total_steps": 5}))
while True:
    if (run / "STOP").exists() and mode != "stubborn":
        (run / "STOP").unlink()
        (run / "status.json").write_text(json.dumps({"state": "cancelled", "step": 1, "total_steps": 5}))
        worker.terminate()
        sys.exit(0)
    time.sleep(0.05)
'''


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture()
def fake_trainer(tmp_path, monkeypatch):
    """`JobManager.start` runs the fake trainer instead of `tiviz train`; returns a function making requests."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    mode = {"value": "obedient"}
    monkeypatch.setattr(jobs, "train_command", lambda req: [sys.executable, str(script), str(req.out), mode["value"]])

    def request(name: str, how: str = "obedient") -> jobs.TrainRequest:
        mode["value"] = how
        return jobs.TrainRequest(Path("pairs.jsonl"), "model", "paper", tmp_path / "runs" / name, 5)

    return request


def manager(runs_dir: Path | None = None) -> jobs.JobManager:
    m = jobs.JobManager(max_running=1, runs_dir=runs_dir, watch=False)
    atexit.unregister(m.shutdown)  # the test ends its jobs itself
    return m


def test_enforce_stop_escalates_from_stop_file_to_sigterm_to_sigkill(fake_trainer):
    m = manager()
    job = m.start("s1", fake_trainer("stubborn", how="stubborn"))
    run = job.run_dir
    wait_for(lambda: (run / "status.json").exists(), what="the trainer's status")
    worker = int((run / "worker.pid").read_text())
    assert m.cancel("s2") == "none"  # another session cannot cancel it
    assert m.cancel("s1") == "request" and (run / "STOP").exists()
    (run / "STOP").unlink()  # a trainer starting up clears a stale request: enforce_stop repeats it
    job.enforce_stop(grace_s=60)
    assert (run / "STOP").exists() and not (run / "got-sigterm").exists() and job.alive()
    job.stop_requested = time.time() - 61  # past the grace: SIGTERM to the group
    job.enforce_stop(grace_s=60)
    wait_for(lambda: (run / "got-sigterm").exists(), what="SIGTERM")
    assert job.alive() and job.status()["state"] == "stopping"  # stubborn: still there
    job.stop_requested = time.time() - 60 - jobs.KILL_AFTER_S - 1  # then SIGKILL to the group
    job.enforce_stop(grace_s=60)
    job.process.wait(timeout=10)
    assert job.returncode() == -signal.SIGKILL and job.status()["state"] == "cancelled"
    wait_for(lambda: gone(worker), what="the worker to die with its group")


def test_a_restarted_app_adopts_the_running_job_and_keeps_the_limit(fake_trainer):
    first = manager()
    job = first.start("s1", fake_trainer("r1"))
    runs = job.run_dir.parent
    wait_for(lambda: (job.run_dir / "status.json").exists(), what="the trainer's status")
    rec = json.loads((job.run_dir / jobs.JOB_FILE).read_text())
    assert rec["pid"] == job.pid and rec["owner"] == "s1"

    # the app is killed (no shutdown) and started again: a new manager over the same runs folder
    second = manager(runs)
    adopted = second.job_of("new-session")
    assert adopted is not None and adopted.adopted and adopted.pid == job.pid and adopted.name == "r1"
    assert second.any_running() and adopted.status()["state"] == "running"
    with pytest.raises(jobs.JobRefused, match="already running"):
        second.start("new-session", fake_trainer("r2"))
    assert not (runs / "r2").exists()
    assert second.cancel("new-session") == "request"  # its session is gone: any session may cancel it
    job.process.wait(timeout=20)
    assert not adopted.alive() and adopted.status()["state"] == "cancelled"
    assert manager(runs).job_of("x") is None  # nothing left to adopt


def test_a_reused_pid_is_not_adopted_and_the_dead_run_shows_interrupted(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "step": 2, "total_steps": 5}))
    # the pid is alive (this test process) but started at another time than the job file says
    (run / jobs.JOB_FILE).write_text(json.dumps({"pid": os.getpid(), "create_time": 12345.0, "owner": "s"}))
    assert jobs.Job.adopt(run) is None and not manager(run.parent).any_running()
    assert [r.state for r in jobs.list_runs(run.parent)] == ["interrupted"]


APP_THAT_EXITS = r'''
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from app import jobs

script, runs = sys.argv[2], Path(sys.argv[3])
jobs.train_command = lambda req: [sys.executable, script, str(req.out), "obedient"]
m = jobs.JobManager(max_running=1, runs_dir=runs)
job = m.start("s1", jobs.TrainRequest(Path("p"), "m", "paper", runs / "r", 5))
while not (job.run_dir / "worker.pid").exists():
    time.sleep(0.05)
print(job.pid, (job.run_dir / "worker.pid").read_text(), flush=True)
'''


def test_the_app_exiting_stops_its_job_and_the_jobs_workers(tmp_path):
    """The app process ends normally (as Streamlit does on SIGTERM, next test): its atexit hook asks the trainer
    to stop, and the trainer and its worker are gone when the app has exited."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-c", APP_THAT_EXITS, str(ROOT), str(script), str(runs)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    trainer, worker = map(int, done.stdout.split())
    wait_for(lambda: gone(trainer) and gone(worker), timeout=10, what="the job to end with the app")
    assert json.loads((runs / "r" / "status.json").read_text())["state"] == "cancelled"  # it stopped cleanly
    assert not (runs / "r" / "got-sigterm").exists()


STREAMLIT_WITH_ATEXIT = r'''
import atexit, sys
from pathlib import Path
marker = Path(sys.argv[1])
atexit.register(lambda: marker.write_text("atexit ran"))
from streamlit.web.cli import main
sys.argv = ["streamlit", "run", sys.argv[2], "--server.headless", "true", "--server.port", sys.argv[3],
            "--browser.gatherUsageStats", "false"]
main()
'''


def test_streamlit_runs_atexit_hooks_when_it_gets_sigterm(tmp_path):
    """What the previous test relies on: SIGTERM makes the Streamlit server stop and the process exit through
    `atexit` (where `JobManager.shutdown` is registered)."""
    page = tmp_path / "page.py"
    page.write_text("import streamlit as st\nst.write('hi')\n")
    marker, port = tmp_path / "atexit-ran", free_port()
    proc = subprocess.Popen([sys.executable, "-c", STREAMLIT_WITH_ATEXIT, str(marker), str(page), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return proc.poll() is not None
        wait_for(healthy, timeout=60, what="the Streamlit server")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == "atexit ran"
