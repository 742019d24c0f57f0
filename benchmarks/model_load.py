"""Loading the offline default model: the first load (GGUF weights converted to safetensors and cached) against a
load from the cache, each in a fresh process (import of torch and transformers included), alternated over rounds.

    .venv/bin/python benchmarks/model_load.py            # 3 rounds, prints the Markdown section
    .venv/bin/python benchmarks/model_load.py --write    # also replaces its section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attribution import write_section  # the same section writer as the other benchmarks

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Loading the default model"
LOAD = "import torch; torch.set_num_threads(1); import tiviz; tiviz.load_model()"


def timed_load(cache: Path) -> float:
    """Seconds for a new Python process to load the default model with `cache` as TIVIZ_CACHE_DIR."""
    env = {**os.environ, "TIVIZ_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOAD], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="replace this section of docs/BENCHMARKS.md")
    args = ap.parse_args()
    first, cached, loads = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            loads.append(os.getloadavg()[0])
            first.append(timed_load(Path(tmp)))  # converts and caches
            cached.append(timed_load(Path(tmp)))  # reads the cache
    ratio = statistics.median(f / c for f, c in zip(first, cached, strict=True))
    text = "\n".join([
        SECTION, "",
        "**What.** `tiviz.load_model()` of the offline default model in a fresh process (Python start and the import "
        "of torch and transformers included), one torch thread: the first load, which converts the packaged GGUF "
        "weights to safetensors and caches them, against a load from that cache, in rounds of one each.", "",
        f"**Command.** `.venv/bin/python benchmarks/model_load.py --rounds {args.rounds}`; 1-minute load average "
        f"{min(loads):.1f} to {max(loads):.1f} (2 cores, shared).", "",
        "| load | seconds, median (min..max) |", "|---|---|",
        f"| first (convert and cache) | {statistics.median(first):.1f} ({min(first):.1f}..{max(first):.1f}) |",
        f"| from the cache | {statistics.median(cached):.1f} ({min(cached):.1f}..{max(cached):.1f}) |", "",
        f"The first load takes {ratio:.1f}x a load from the cache (median of the per-round ratios).", "",
    ])
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
