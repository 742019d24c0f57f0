"""The HTML report in headless Chromium with the network off: every plot draws, nothing is fetched, no console
error, no script from the dataset runs. Run with `pytest -m browser`; needs /usr/bin/chromium
(scripts/setup-browser.sh installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "report"
HOSTILE_ID = "x</script><script>alert(1)</script>"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} not found: run scripts/setup-browser.sh (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report with every section: scores and curves, a before/after comparison, a hostile pair."""
    from tiviz.attribution import attribute
    from tiviz.data import load_pairs
    from tiviz.evaluation import evaluate
    from tiviz.report import write_report
    from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer

    tok = tiny_tokenizer()
    rows = [*tiny_pairs()[:2], {
        "id": HOSTILE_ID, "prompt": "<img src=x onerror=alert(1)> javascript:alert(1)",
        "chosen": "</script><svg onload=alert(1)> <a href='javascript:alert(2)'>go",
        "rejected": "<b>unclosed <i <!-- <script>", "rationale_chosen": ["<svg onload"], "rationale_rejected": ["<b>"],
    }]
    pairs = load_pairs(rows)
    methods = "gradient,attention,tidpo,grad_x_input"
    before = attribute(tiny_model(seed=0), pairs, methods, tokenizer=tok)
    after = attribute(tiny_model(seed=1), pairs, methods, tokenizer=tok)
    ev = evaluate(tiny_model(seed=0), pairs, table=before, tokenizer=tok, n_random=2)
    return write_report(before, tmp_path_factory.mktemp("report") / "report.html", after=after, scores=ev)


def test_report_draws_every_plot_offline(report):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    dialogs: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.resolve().as_uri(), wait_until="load")
            n = int(page.get_attribute('meta[name="tiviz-figures"]', "content"))
            page.wait_for_function(
                "n => document.querySelectorAll('div.tiviz-figure.js-plotly-plot').length === n && "
                "Array.from(document.querySelectorAll('div.tiviz-figure')).every(d => d.querySelector('.main-svg'))",
                arg=n, timeout=60_000)
            drawn = page.evaluate("document.querySelectorAll('div.tiviz-figure .main-svg').length")
            external = page.evaluate("""Array.from(document.querySelectorAll('*')).flatMap(el =>
                ['src', 'href', 'xlink:href', 'action'].map(a => el.getAttribute(a)).filter(v => v &&
                /^\\s*(https?:)?\\/\\//i.test(v)))""")
            heading_texts = page.locator("section#pairs h3").all_inner_texts()
            token_text = page.locator("section#pairs").inner_text()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert n >= 9  # scores, curves, 5 distribution plots, margins, before/after at least
    assert drawn >= n  # plotly draws one or more .main-svg per figure
    assert errors == []
    assert dialogs == []  # no payload from the dataset ran
    assert external == []
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), requests
    assert any(h.startswith(HOSTILE_ID) for h in heading_texts)  # shown as text, not parsed
    assert "<svg onload=alert(1)>" in token_text.replace("\n", "")
