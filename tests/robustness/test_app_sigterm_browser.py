"""Issue 13 item 8 end to end: `tiviz app` (tiny model) in a real browser starts a training job on the Train page;
SIGTERM to the app ends the job with a clean stop (status cancelled, a checkpoint), and no trainer process is
left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tiviz.testing import wait_for

from .test_kill_resume import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def test_sigterm_to_the_app_stops_its_training_job(tmp_path):
    from tiviz.models import LoadedModel, save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    port, runs, model = free_port(), tmp_path / "runs", tmp_path / "tiny-model"
    save_model(LoadedModel(tiny_model(seed=0), tiny_tokenizer(), "tiny"), model)  # the app's model: a folder
    env = {**os.environ, "TIVIZ_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    log = open(tmp_path / "app.log", "wb")
    app = subprocess.Popen([sys.executable, "-m", "tiviz.cli", "app", "--port", str(port), "--model", str(model),
                            "--runs-dir", str(runs)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url) or app.poll() is not None, 120, "the app")
        assert app.poll() is None, (tmp_path / "app.log").read_text()[-2000:]
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"{url}/train")
            page.get_by_text("Start training").wait_for(timeout=120_000)
            page.get_by_role("spinbutton", name="Steps").fill("2000")
            page.get_by_role("textbox", name="Run name").fill("long")
            page.get_by_role("button", name="Start training").click()
            page.get_by_text("Started long.").wait_for(timeout=60_000)
            run = runs / "long"
            wait_for(lambda: json.loads((run / "status.json").read_text() or "{}").get("step", 0) >= 1
                     if (run / "status.json").exists() else False, 180, "the first training step")
            trainer = json.loads((run / "job.json").read_text())["pid"]
            assert psutil.pid_exists(trainer)
            browser.close()
        app.terminate()  # SIGTERM, as a service manager stops the app
        app.wait(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
        log.close()
    wait_for(lambda: not psutil.pid_exists(trainer), 30, "the trainer to end with the app")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "cancelled" and status["step"] < 2000
    assert (run / "checkpoints" / f"step-{status['step']:07d}").is_dir()
