"""End to end in a real browser: `streamlit run app/streamlit_app.py` (tiny model, sample data) driven by
Debian's Chromium through playwright. The Inspect page renders the shaded tokens of a sample pair (a screenshot
goes to artifacts/browser/inspect.png), and a hostile upload shows as text without running anything."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.app_pages.pickers import method_options
from tiviz.data import load_pairs
from tiviz.evaluation.method_ranking import default_method
from tiviz.testing import free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts" / "browser"
METHOD = default_method("likelihood", method_options(reference=False))[0]  # what Inspect opens on for the base model
TOKENS = f".tiviz-tokens[data-method='{METHOD}']"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip("browser test needs Debian's chromium at /usr/bin/chromium (scripts/setup-browser.sh installs "
                "it)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="browser test needs the playwright package")


@pytest.fixture(scope="module")
def browser_tmp(tmp_path_factory) -> Path:
    """The served app's temporary folder: its runs folder is `runs/` in it."""
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def server(browser_tmp, tiny_model_folder):
    """The app served by `streamlit run` on a free port, with the tiny model; stopped after the module."""
    port = free_port()
    tmp = browser_tmp
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



def upload_on_inspect(page, server: str, path) -> None:
    """Open the app on Inspect, wait for its first shaded response, then upload `path` as the dataset."""
    page.goto(server)
    page.get_by_text("Inspect a pair").wait_for(timeout=120_000)
    page.locator(TOKENS).first.wait_for(timeout=120_000)
    page.get_by_role("combobox", name="Dataset").click()
    page.get_by_role("option", name="upload a file…").click()
    page.locator("input[type=file]").set_input_files(str(path))

def test_inspect_page_renders_shaded_tokens(server, browser):
    pair = load_pairs(ROOT / "sample_data" / "train.jsonl")[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server)
    page.get_by_text("Inspect a pair").wait_for(timeout=120_000)
    blocks = page.locator(TOKENS)
    blocks.nth(1).wait_for(timeout=120_000)  # Streamlit draws the two sides one after the other
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


def test_diff_view_aligns_the_two_responses(server, browser):
    """The Inspect page's diff view: shared stretches dimmed, differing ones outlined, shading kept; the
    screenshot goes to artifacts/browser/diff.png."""
    pair = load_pairs(ROOT / "sample_data" / "train.jsonl")[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(server)
    page.get_by_text("Inspect a pair").wait_for(timeout=120_000)
    diff = page.locator(f".tiviz-diff[data-method='{METHOD}']")
    diff.wait_for(timeout=120_000)
    chosen = diff.locator(".diff-seg:not(.diff-labels) .diff-chosen .tok:not(.tok-special)").all_text_contents()
    rejected = diff.locator(".diff-seg:not(.diff-labels) .diff-rejected .tok:not(.tok-special)").all_text_contents()
    assert "".join(chosen) == pair.chosen and "".join(rejected) == pair.rejected  # each side whole, in order
    same = diff.locator(".diff-same").first
    differ = diff.locator(".diff-differ").first
    assert float(same.evaluate("e => getComputedStyle(e).opacity")) < 1  # dimmed
    assert differ.evaluate("e => getComputedStyle(e).outlineStyle") == "solid"  # outlined
    assert diff.locator(".tok").first.evaluate("e => getComputedStyle(e).backgroundColor").startswith("rgb")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    diff.scroll_into_view_if_needed()
    diff.screenshot(path=str(ARTIFACTS / "diff.png"))
    page.close()


def test_hostile_upload_renders_as_text(server, browser, tmp_path):
    row = {"id": "xss", "prompt": "<script>alert('p')</script>", "chosen": "<img src=x onerror=alert('c')>",
           "rejected": "<b onmouseover=alert('r')>bold</b>"}
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(row) + "\n")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    upload_on_inspect(page, server, path)
    page.get_by_text("<script>alert('p')</script>").wait_for(timeout=120_000)  # the prompt, as text
    chosen = page.locator(TOKENS).first
    chosen.wait_for()
    assert "".join(chosen.locator(".tok:not(.tok-special)").all_text_contents()) == row["chosen"]
    assert page.locator(".tiviz-tokens img, .tiviz-tokens script, .tiviz-tokens b").count() == 0
    page.mouse.move(10, 10)
    page.wait_for_timeout(500)
    assert not dialogs, dialogs
    page.close()


EVIL_IMAGE = "![x](https://evil.example/b.png)"
EVIL_LINK = "[verify your account](https://evil.example/)"
# Records every img / a element pointing at the payloads' host that is ever added to the page (progress texts
# and tooltips come and go), and every request made to it.
WATCH_EVIL = """
window.__evil = [];
const look = (node) => {
  if (!(node instanceof Element)) return;
  for (const el of [node, ...node.querySelectorAll("img, a, image, source")]) {
    const url = el.getAttribute("src") || el.getAttribute("href") || el.getAttribute("srcset") || "";
    if (url.includes("evil.example")) window.__evil.push(el.outerHTML.slice(0, 200));
  }
};
new MutationObserver((records) => records.forEach((r) => {
  r.addedNodes.forEach(look);
  if (r.type === "attributes") look(r.target);
})).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["src", "href"]});
"""


def shown(text: str) -> re.Pattern:
    """`text` as it shows on the page: escape_markdown adds invisible word joiners (U+2060) to stop autolinks."""
    return re.compile("\u2060?".join(map(re.escape, text)))


CHOSEN_TEXT_IS = """(want) => {
  const block = document.querySelector("TOKENS");
  return block && [...block.querySelectorAll(".tok:not(.tok-special)")].map((e) => e.textContent).join("") === want;
}""".replace("TOKENS", TOKENS)


def test_dataset_text_never_becomes_markdown(server, browser, browser_tmp, tmp_path):
    """Pair ids and the file name holding Markdown images and links reach the sidebar, Before / after (its
    subheader), Export (its radio options) and the tooltips as text: no img or a with the payloads' host is ever
    in the DOM, and the browser requests nothing from it."""
    from tiviz.models import LoadedModel, save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    run = browser_tmp / "runs" / "trained"
    save_model(LoadedModel(tiny_model(seed=1), tiny_tokenizer(), "tiny-seed1"), run / "final")
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 3, "total_steps": 3, "pid": 0}))
    rows = [{"id": EVIL_IMAGE, "prompt": "Q " + EVIL_IMAGE, "chosen": "Yes.", "rejected": "No."},
            {"id": EVIL_LINK, "prompt": "Q " + EVIL_LINK, "chosen": "Sure.", "rejected": "Nope."}]
    path = tmp_path / "![x](https:evil.example) [verify](https:evil.example).jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    requested: list[str] = []
    page.route("**/*evil.example*/**", lambda route: (requested.append(route.request.url), route.abort()))
    page.add_init_script(WATCH_EVIL)
    upload_on_inspect(page, server, path)
    page.wait_for_function(CHOSEN_TEXT_IS, arg="Yes.", timeout=120_000)  # the first pair's shaded response
    for icon in page.get_by_test_id("stSidebar").get_by_test_id("stTooltipIcon").all():  # the help texts
        icon.hover()
        page.wait_for_timeout(300)
    assert page.evaluate("window.__evil") == []
    page.get_by_text(shown(f"pairs in {path.name}")).wait_for(timeout=10_000)  # the file name's tooltip, as text

    page.get_by_role("link", name="Export").click()
    page.get_by_text("HTML report").wait_for(timeout=120_000)
    assert page.evaluate("window.__evil") == []
    page.get_by_text(shown(f"this pair ({EVIL_IMAGE})")).wait_for(timeout=10_000)
    page.get_by_role("link", name="Before / after").click()
    page.locator(".tiviz-tokens").first.wait_for(timeout=120_000)
    assert page.evaluate("window.__evil") == []
    page.get_by_text(shown(f"Pair {EVIL_IMAGE}")).wait_for(timeout=10_000)
    page.get_by_role("combobox", name="Pair").click()  # the options list, with the link payload
    page.get_by_role("option").filter(has_text=EVIL_LINK).click()
    page.get_by_text(shown(f"Pair {EVIL_LINK}")).wait_for(timeout=120_000)
    page.wait_for_load_state("networkidle")
    assert page.locator("img[src*='evil.example'], a[href*='evil.example']").count() == 0
    assert page.evaluate("window.__evil") == []
    assert requested == []
    page.close()
