"""End to end in a real browser: `streamlit run app/streamlit_app.py` (tiny model, sample data) driven by
Debian's Chromium through playwright. The Inspect page renders the shaded tokens of a sample pair (a screenshot
goes to artifacts/browser/inspect.png), and a hostile upload shows as text without running anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tiviz.data import load_pairs
from tiviz.testing import free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts" / "browser"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip("browser test needs Debian's chromium at /usr/bin/chromium (scripts/setup-browser.sh installs "
                "it)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="browser test needs the playwright package")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_folder):
    """The app served by `streamlit run` on a free port, with the tiny model; stopped after the module."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "TIVIZ_APP_MODEL": str(tiny_model_folder), "TIVIZ_RUNS_DIR": str(tmp / "runs"),
           "TIVIZ_CACHE_DIR": str(tmp / "cache"), "TMPDIR": str(tmp)}
    log = open(tmp / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"), "--server.headless",
         "true", "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
         "false"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"streamlit did not start: {(tmp / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield b
        b.close()


def test_inspect_page_renders_shaded_tokens(server, browser):
    pair = load_pairs(ROOT / "sample_data" / "train.jsonl")[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server)
    page.get_by_text("Inspect a pair").wait_for(timeout=120_000)
    blocks = page.locator(".tiviz-tokens[data-method='tidpo']")
    blocks.first.wait_for(timeout=120_000)
    assert blocks.count() == 2
    chosen = blocks.nth(0)
    # every response token is a span; EOS aside, their text is the chosen response
    texts = chosen.locator(".tok:not(.tok-special)").all_text_contents()
    assert "".join(texts) == pair.chosen
    tip = chosen.locator(".tok").first.get_attribute("data-tip")
    assert tip and "score" in tip and "rank" in tip
    background = chosen.locator(".tok").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert background.startswith("rgb")  # the style survived Streamlit's HTML sanitiser
    page.get_by_text("Preference scores").wait_for()
    page.get_by_text("log-prob margin").wait_for()
    page.get_by_test_id("stDataFrame").locator("canvas").first.wait_for()  # the top-k table has drawn
    page.wait_for_load_state("networkidle")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "inspect.png"), full_page=True)
    assert not dialogs
    page.close()


def test_hostile_upload_renders_as_text(server, browser, tmp_path):
    row = {"id": "xss", "prompt": "<script>alert('p')</script>", "chosen": "<img src=x onerror=alert('c')>",
           "rejected": "<b onmouseover=alert('r')>bold</b>"}
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(row) + "\n")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server)
    page.get_by_text("Inspect a pair").wait_for(timeout=120_000)
    page.locator(".tiviz-tokens[data-method='tidpo']").first.wait_for(timeout=120_000)
    page.get_by_role("combobox", name="Dataset").click()
    page.get_by_role("option", name="upload a file…").click()
    page.locator("input[type=file]").set_input_files(str(path))
    page.get_by_text("<script>alert('p')</script>").wait_for(timeout=120_000)  # the prompt, as text
    chosen = page.locator(".tiviz-tokens[data-method='tidpo']").first
    chosen.wait_for()
    assert "".join(chosen.locator(".tok:not(.tok-special)").all_text_contents()) == row["chosen"]
    assert page.locator(".tiviz-tokens img, .tiviz-tokens script, .tiviz-tokens b").count() == 0
    page.mouse.move(10, 10)
    page.wait_for_timeout(500)
    assert not dialogs, dialogs
    page.close()
