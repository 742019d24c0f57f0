"""app/jobs.py and `tiviz app` without a browser: the trainer command line the Train page builds is one the
real CLI accepts, run folders are read robustly, Cancel terminates a job that has not started training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from app import jobs
from tiviz.cli import build_parser
from tiviz.errors import TivizError


def test_train_command_is_accepted_by_the_cli(tmp_path):
    req = jobs.TrainRequest(pairs=Path("sample_data/train.jsonl"), model="tiny-folder", preset="dpo",
                            out=tmp_path / "r", max_steps=7,
                            overrides={"learning_rate": 1e-5, "batch_size": 2, "use_prior": False, "gamma": 0.0})
    cmd = jobs.train_command(req)
    assert cmd[:4] == [sys.executable, "-m", "tiviz.cli", "train"]
    args = build_parser().parse_args(cmd[3:])
    assert (args.pairs, args.model, args.preset, args.out, args.max_steps) == (
        "sample_data/train.jsonl", "tiny-folder", "dpo", str(tmp_path / "r"), 7)
    assert args.learning_rate == 1e-5 and args.batch_size == 2 and args.use_prior is False and args.gamma == 0.0


def test_status_and_runs_listing(tmp_path):
    done = tmp_path / "done"
    (done / "final").mkdir(parents=True)
    (done / "final" / "config.json").write_text("{}")
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(done / "final" / "model.safetensors"))
    (done / "status.json").write_text(json.dumps({"state": "finished", "step": 5, "total_steps": 5}))
    running = tmp_path / "running"
    running.mkdir()
    (running / "status.json").write_text('{"state": "running", "st')  # half-written: read as unknown
    (tmp_path / ".hidden").mkdir()
    runs = {r.name: r for r in jobs.list_runs(tmp_path)}
    assert set(runs) == {"done", "running"}
    assert runs["done"].finished and runs["done"].step == 5
    assert not runs["running"].finished and runs["running"].state == "unknown"
    assert [r.name for r in jobs.list_runs(tmp_path, exclude={"done"})] == ["running"]
    assert jobs.read_status(tmp_path / "absent") == {}


def test_cancel_before_training_starts_terminates(tmp_path):
    manager = jobs.JobManager(max_running=1)
    job = jobs.Job.of("s1", tmp_path, subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                                       start_new_session=True), ["sleep"])
    manager._jobs["s1"] = job
    assert job.status()["state"] == "starting"
    with pytest.raises(jobs.JobRefused, match="yours"):
        manager.start("s1", jobs.TrainRequest(Path("x"), "m", "paper", tmp_path / "new", 1))
    with pytest.raises(jobs.JobRefused, match="another session"):
        manager.start("s2", jobs.TrainRequest(Path("x"), "m", "paper", tmp_path / "new", 1))
    assert manager.job_of("s2") is None and manager.running_elsewhere("s2") == {tmp_path.name}
    assert job.request_cancel() == "terminate"  # no status.json: the trainer has not begun
    job.process.wait(timeout=10)
    assert job.status()["state"] == "cancelled" and not manager.any_running()


def test_app_command(monkeypatch, tmp_path):
    from tiviz.commands import app as app_cmd

    args = build_parser().parse_args(["app", "--port", "8765", "--model", "tiny", "--runs-dir", str(tmp_path)])
    cmd = app_cmd.build_command(args)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]).is_file()
    assert cmd[4].endswith("app/streamlit_app.py")
    for flag, value in (("--server.headless", "true"), ("--browser.gatherUsageStats", "false"),
                        ("--server.port", "8765"), ("--server.maxUploadSize", "20")):
        assert cmd[cmd.index(flag) + 1] == value
    env = app_cmd.build_env(args)
    assert env["TIVIZ_APP_MODEL"] == "tiny" and env["TIVIZ_RUNS_DIR"] == str(tmp_path.resolve())
    monkeypatch.setattr(app_cmd, "app_script", lambda: tmp_path / "missing.py")
    with pytest.raises(TivizError, match="source checkout"):
        app_cmd.run(args)


def test_app_help_does_not_load_torch():
    out = subprocess.run([sys.executable, "-m", "tiviz.cli", "app", "--help"], capture_output=True, text=True,
                         check=True)
    assert "--port" in out.stdout and "--model" in out.stdout
    assert "torch" not in subprocess.run(
        [sys.executable, "-c", "import sys, tiviz.commands.app; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True).stdout.split()


def test_train_page_shows_a_damaged_run_and_does_not_offer_it(new_app, finished_run):
    weights = finished_run / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])  # a copy cut short
    at = new_app()
    at.switch_page("app_pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.value for w in at.warning] == ["A run's saved model is damaged and cannot be loaded:"]
    [code] = [c.value for c in at.code if "model.safetensors" in c.value]
    assert "truncated" in code and "trained" in code
    assert "No finished runs" in " ".join(c.value for c in at.caption)
