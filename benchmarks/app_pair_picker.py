"""App: time to draw the sidebar's pair picker for a large dataset, in `AppTest` (no browser, no model).

    .venv/bin/python benchmarks/app_pair_picker.py              # about 2 min; writes its section of docs/BENCHMARKS.md
    .venv/bin/python benchmarks/app_pair_picker.py --no-write

Each measurement is one script run (`AppTest.run()`, a rerun as a widget change causes) whose only content is the
pair picker over a dataset of N pairs already in memory: the median of `--repeats` reruns after a first run.
Three pickers are compared in the same process: the one the app uses (`pickers.pair_picker`: a lookup by id, and
past `PAGE` pairs a search box and pages of `PAGE` options), the same lookup with every pair in one list, and the
picker as it was before (every pair in one list, each label finding its pair by a scan of the dataset).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## App: pair picker draw"
SIZE_ENV, KIND_ENV = "TIVIZ_BENCH_PAIRS", "TIVIZ_BENCH_PICKER"


def script() -> None:
    """The AppTest script: the chosen picker over N generated pairs (built once per process)."""
    import os

    import streamlit as st

    from app import state
    from app.app_pages import pickers
    from tiviz.data import PreferencePair

    @st.cache_resource
    def dataset(n: int) -> state.Dataset:
        pairs = tuple(PreferencePair(id=f"p-{i:06d}", prompt=f"Question number {i}: what is {i} + 1?",
                                     chosen=f"{i + 1}.", rejected="No idea.") for i in range(n))
        return state.Dataset(name="bench.jsonl", key=f"bench-{n}", path="bench.jsonl", pairs=pairs)

    ds = dataset(int(os.environ["TIVIZ_BENCH_PAIRS"]))
    kind = os.environ["TIVIZ_BENCH_PICKER"]
    with st.sidebar:
        if kind == "paged":
            pickers.pair_picker(ds)
        elif kind == "one list, by id":
            st.selectbox("Pair", ds.ids, key="pair", format_func=lambda i: pickers._pair_label(ds.pair(i)))
        else:  # before: one list, each label found by a scan

            def scan(pair_id: str) -> PreferencePair:
                for p in ds.pairs:
                    if p.id == pair_id:
                        return p
                raise KeyError(pair_id)

            st.selectbox("Pair", [p.id for p in ds.pairs], key="pair",
                         format_func=lambda i: pickers._pair_label(scan(i)))


def draw_seconds(n: int, kind: str, repeats: int) -> list[float]:
    from streamlit.testing.v1 import AppTest

    os.environ[SIZE_ENV], os.environ[KIND_ENV] = str(n), kind
    at = AppTest.from_function(script, default_timeout=900)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
    assert not at.exception and at.selectbox(key="pair").value == "p-000000"
    return times


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section in the file (or append it), leaving the other sections alone."""
    from sections import write_section as write

    write(path, SECTION, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="reruns timed per configuration (default 3)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"), help="file to write the section to")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import streamlit

    from app.app_pages.pickers import PAGE

    plan = [(1_000, "paged"), (20_000, "paged"), (100_000, "paged"), (100_000, "one list, by id"),
            (1_000, "before (scan)"), (5_000, "before (scan)"), (20_000, "before (scan)")]
    rows = []
    medians: dict[tuple[int, str], float] = {}
    for n, kind in plan:
        times = draw_seconds(n, kind, args.repeats)
        medians[n, kind] = statistics.median(times)
        rows.append(f"| {n:,} | {kind} | {medians[n, kind]:.3f} | {min(times):.3f} to {max(times):.3f} |")
        print(rows[-1], flush=True)
    paged, before = medians[100_000, "paged"], medians[20_000, "before (scan)"]
    load = os.getloadavg()[0]
    text = "\n".join([
        SECTION, "",
        "Time of one script run (a rerun, as any widget change causes) whose only content is the sidebar's pair "
        "picker, in `AppTest` (no browser), over N pairs already in memory. The picker the app uses finds a pair "
        f"by id and, past {PAGE:,} pairs, lists one page of {PAGE:,} (or the first {PAGE:,} matches of a search box). "
        f"With 100,000 pairs it draws in {paged:.3f} s: {before / paged:.0f} times faster than the picker before "
        f"drew 20,000 ({before:.2f} s), whose labels each found their pair by a scan (quadratic: it would take "
        "about 25 times its 20,000-pair time at 100,000, not measured).", "",
        "| pairs | picker | median s | range s |", "|---|---|---|---|", *rows, "",
        f"- {args.repeats} timed reruns per row after a first run (which builds the dataset); same process, one "
        "after another, so the ratios hold even though the machine is shared "
        f"(1-minute load average {load:.1f} at the end).",
        f"- Machine: {os.cpu_count()} cores visible, {platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}, streamlit {streamlit.__version__}.",
        f"- Command: `.venv/bin/python benchmarks/app_pair_picker.py --repeats {args.repeats}`",
        f"- Measured {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.", ""])
    print(text)
    if not args.no_write:
        write_section(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
