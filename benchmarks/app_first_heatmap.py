"""App: time from opening the Inspect page to the first heatmap (shaded tokens) of a sample pair, in a real
browser, on the real default model once the server has it cached. Target: under 3 s.

    .venv/bin/python benchmarks/app_first_heatmap.py            # 5 pairs; appends to docs/BENCHMARKS.md
    .venv/bin/python benchmarks/app_first_heatmap.py --pairs 3 --no-write

What one measurement covers: a new browser tab (a new app session; the browser's HTTP cache warm, as for a
user who opened the app before) opens `/?pair=ID` (a pair never attributed before, so nothing but the model is
cached), Streamlit serves the page, runs the script, attributes the pair with the
method Inspect opens on (the quality ranking's best for the base model's likelihood,
`tiviz.evaluation.method_ranking`; gradient without a ranking: one forward + backward over chosen and rejected),
and the browser shows the first shaded token. The first page load of the server (model loading) is reported apart, and so is a return to a pair
already computed (the results cache).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tiviz.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]


def opening_method() -> str:
    """The method Inspect opens on for the base model: the app's own choice over its own method list."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app.app_pages.pickers import method_options
    from tiviz.evaluation.method_ranking import default_method

    return default_method("likelihood", method_options(reference=False))[0]


METHOD = opening_method()
HEATMAP = f".tiviz-tokens[data-method='{METHOD}'] .tok"
SECTION = "## App: time to first heatmap"
TARGET_S = 3.0


def start_server(model: str, tmp: Path, omp_wait_policy: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TIVIZ_APP_MODEL": model, "TIVIZ_RUNS_DIR": str(tmp / "runs")}
    env.pop("OMP_WAIT_POLICY", None)
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"), "--server.headless",
         "true", "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
         "false"], cwd=ROOT, env=env, stdout=open(tmp / "streamlit.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"streamlit did not start; see {tmp / 'streamlit.log'}")


def time_to_heatmap(context, url: str, pair_id: str, expect_text: str) -> float:
    """Seconds from navigation start to the first shaded token of the pair, in a new tab (a new app session;
    the browser's HTTP cache is shared, as for a user who has opened the app before)."""
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(f"{url}/?pair={pair_id}")
    page.locator(HEATMAP).first.wait_for(timeout=300_000)
    elapsed = time.perf_counter() - t0
    shown = "".join(page.locator(f".tiviz-tokens[data-method='{METHOD}']").first
                    .locator(".tok:not(.tok-special)").all_text_contents())
    page.close()
    if shown != expect_text:
        raise SystemExit(f"pair {pair_id}: the page showed another text than the pair's chosen response")
    return elapsed


def versions() -> dict[str, str]:
    import plotly
    import streamlit
    import torch
    import transformers

    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    cpu = "unknown CPU"
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    return {"machine": f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}",
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "streamlit": streamlit.__version__, "plotly": plotly.__version__, "browser": chromium or "chromium"}


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section in the file (or append it), leaving the other sections alone."""
    from sections import write_section as write

    write(path, SECTION, text)


def measure(model: str, pairs: list, omp_wait_policy: str | None) -> tuple[float, list[float], float]:
    """(first page with model load, new-pair times, return to a computed pair) on a fresh server."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="tiviz-bench-") as tmp:
        proc, url = start_server(model, Path(tmp), omp_wait_policy)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                cold = time_to_heatmap(context, url, pairs[0].id, pairs[0].chosen)  # loads the model
                print(f"first page of the server (model load included): {cold:.2f} s")
                times = []
                for pair in pairs[1:]:
                    t = time_to_heatmap(context, url, pair.id, pair.chosen)
                    times.append(t)
                    print(f"{pair.id}: {t:.2f} s")
                cached = time_to_heatmap(context, url, pairs[1].id, pairs[1].chosen)
                print(f"return to {pairs[1].id} (results cached): {cached:.2f} s")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return cold, times, cached


def attribution_only(model: str, pairs: list) -> list[float]:
    """The attribution alone (the opening method, one pair, in this process, same thread settings as the app): the part of
    the time the app cannot shorten."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the app; read when torch loads (first import here)
    from tiviz.attribution import attribute
    from tiviz.models import load_model

    loaded = load_model(model)
    times = []
    for pair in pairs:
        t0 = time.perf_counter()
        attribute(loaded, [pair], [METHOD])
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="pairs to time (each new to the server)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model the app runs on")
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"), help="file to write the section to")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--compare-active", action="store_true",
                        help="also time a server with OMP_WAIT_POLICY=ACTIVE (torch's default) as a peer")
    args = parser.parse_args()

    from tiviz.data import load_pairs

    pairs = load_pairs(ROOT / "sample_data" / "train.jsonl")[: args.pairs + 1]
    load_before = os.getloadavg()[0]
    cold, times, cached = measure(args.model, pairs, None)
    active = None
    if args.compare_active:
        print("again with OMP_WAIT_POLICY=ACTIVE (spinning OpenMP threads, torch's default):")
        active = measure(args.model, pairs, "ACTIVE")[1]

    alone = attribution_only(args.model, pairs[1:])
    load_after = os.getloadavg()[0]
    med = statistics.median(times)
    command = f".venv/bin/python benchmarks/app_first_heatmap.py --pairs {args.pairs}"
    if args.model != "smollm2-135m-instruct":
        command += f" --model {args.model}"
    if args.compare_active:
        command += " --compare-active"
    v = versions()
    verdict = "meets" if med < TARGET_S else "misses"
    if alone:
        print("attribution alone:", " ".join(f"{t:.2f}" for t in alone))
    lines = [
        SECTION, "",
        f"Time from opening the Inspect page in a new browser tab (a new app session, browser cache warm) to the first shaded token of a sample pair "
        f"that the server has not attributed before, with the model ({args.model}) already loaded: the page "
        f"load, the script run, the opening method ({METHOD}) on both responses and the render. "
        f"Median {med:.2f} s over {len(times)} pairs: {verdict} the {TARGET_S:.0f} s target."
        + (f" Where it goes: the attribution itself ({METHOD} on both responses) takes a median "
           f"{statistics.median(alone):.2f} s in-process on the same pairs, and a page "
           f"with nothing to compute (a pair already attributed) {cached:.2f} s." if alone else ""), "",
        "| measurement | seconds |", "|---|---|",
        *[f"| new pair `{p.id}` | {t:.2f} |" for p, t in zip(pairs[1:], times, strict=True)],
        f"| **median, new pairs** | **{med:.2f}** (min {min(times):.2f}, max {max(times):.2f}) |",
        f"| first page of a fresh server (model load included) | {cold:.2f} |",
        f"| return to a pair already computed (results cache): page and session alone | {cached:.2f} |",
        *([f"| the attribution alone, same new pairs, in-process | median {statistics.median(alone):.2f} "
           f"(min {min(alone):.2f}, max {max(alone):.2f}) |"] if alone else []),
        *([f"| peer: same new pairs, OMP_WAIT_POLICY=ACTIVE | median {statistics.median(active):.2f} "
           f"({statistics.median(active) / med:.1f}x the app's setting) |"] if active else []), "",
        "- The app sets OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep) unless the environment says "
        "otherwise, because torch's default spinning threads compete with other work on the CPU. "
        + ("The peer row measures the difference in this run." if active else
           "Not measured in this run: `--compare-active` adds a peer row that measures it."),
        f"- Machine: {v['machine']}; shared with other jobs while measured (1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after), so timings are noisy.",
        f"- Versions: Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, streamlit "
        f"{v['streamlit']}, plotly {v['plotly']}, {v['browser']} (headless, driven by playwright).",
        f"- Command: `{command}`",
        f"- Measured {time.strftime('%Y-%m-%d %H:%M')}.", "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(Path(args.out), text)
        print(f"wrote the section to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
