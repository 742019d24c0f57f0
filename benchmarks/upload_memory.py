"""App: peak memory (max RSS) of a session that uploads a small Parquet file holding a lot of repeated text.

    .venv/bin/python benchmarks/upload_memory.py                       # this tree; writes its section of docs/BENCHMARKS.md
    .venv/bin/python benchmarks/upload_memory.py --before DIR           # also a tree of earlier code (git archive)

The file: 2,000 rows sharing one 100 KB prompt, dictionary-encoded and zstd-compressed (a few KB on disk, about
200 MB of decoded text), written by the parent. Each measurement is a fresh Python process that opens the app in `AppTest` (tiny
model, `TIVIZ_APP_MODEL=tiny`), uploads the file and runs the page once; its max RSS is read by the parent
(`os.wait4`). The same process without the upload is the floor.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## App: memory of a small upload with much text"

CHILD = r"""
import sys
from pathlib import Path
from streamlit.testing.v1 import AppTest

root, path = Path(sys.argv[1]), Path(sys.argv[2])
at = AppTest.from_file(str(root / "app" / "streamlit_app.py"), default_timeout=600)
at.run()
if sys.argv[3] == "upload":
    at.selectbox(key="dataset").set_value("upload a file…").run()
    at.file_uploader(key="upload").upload("bomb.parquet", path.read_bytes(), "application/octet-stream")
    at.run()
shown = [e.value for e in at.error] or [f"{len(at.session_state['_dataset'].pairs)} pairs loaded"]
print(f"{path.stat().st_size}|{shown[0][:160]!r}|{len(at.exception)}")
"""


def write_bomb(path: Path, n: int = 2000) -> None:
    """2,000 rows sharing one 100 KB prompt, built dictionary-encoded (the 200 MB of text never exist here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompt = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()),
                                            pa.array(["lorem ipsum dolor sit amet " * 3800]))
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "prompt": prompt, "chosen": ["Yes."] * n,
                             "rejected": ["No."] * n}), path, compression="zstd")


def tiny_folder(tmp: Path) -> str:
    """The tiny test model saved as a model folder (the app loads its model from a folder or an id)."""
    from tiviz.models import LoadedModel, save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    folder = tmp / "tiny-model"
    save_model(LoadedModel(tiny_model(seed=0), tiny_tokenizer(), "tiny"), folder)
    return str(folder)


def measure(root: Path, upload: bool) -> tuple[float, str]:
    """(max RSS in MB, what the page showed) of one child process running the app from `root`."""
    with tempfile.TemporaryDirectory() as tmp:
        bomb = Path(tmp) / "bomb.parquet"
        write_bomb(bomb)
        env = {**os.environ, "PYTHONPATH": str(root), "TIVIZ_APP_MODEL": tiny_folder(Path(tmp)), "TIVIZ_RUNS_DIR": f"{tmp}/runs",
               "TIVIZ_CACHE_DIR": f"{tmp}/cache", "TMPDIR": tmp}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(bomb), "upload" if upload else "none"], cwd=root,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {out[-500:]}")
    return usage.ru_maxrss / 1024, out.strip().splitlines()[-1]


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section in the file (or append it), leaving the other sections alone."""
    from sections import write_section as write

    write(path, SECTION, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, metavar="DIR",
                        help="a tree of earlier code to measure too (e.g. `git archive COMMIT | tar -x -C DIR`)")
    parser.add_argument("--before-label", default="before", help="what to call --before in the table")
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"), help="file to write the section to")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    trees = [("this tree", ROOT)] + ([(args.before_label, Path(args.before).resolve())] if args.before else [])
    rows = []
    for label, root in trees:
        floor, _ = measure(root, upload=False)
        peak, shown = measure(root, upload=True)
        size, message, exceptions = shown.split("|", 2)
        message = ast.literal_eval(message)  # the page's first error (Markdown) or the pair count, as plain text
        message = re.sub(r"\\(.)", r"\1", message.replace("**", "")).split("\n")[0].replace("|", "/")
        message += "" if exceptions == "0" else f" ({exceptions} exception(s))"
        rows.append(f"| {label} | {floor:.0f} | {peak:.0f} | {peak - floor:+.0f} | {message} |")
        print(rows[-1], flush=True)
    cmd = "`.venv/bin/python benchmarks/upload_memory.py" + (f" --before DIR --before-label {args.before_label!r}"
                                                          if args.before else "") + "`"
    text = "\n".join([
        SECTION, "",
        f"A {int(size):,}-byte Parquet file of 2,000 rows sharing one 100 KB prompt (dictionary-encoded, zstd) "
        "decodes to about 200 MB of text. Max RSS of a fresh process that opens the app in `AppTest` (tiny "
        "model), uploads it and runs the page once, against the same process without the upload.", "",
        "| code | MB without upload | MB with upload | difference | what the page shows |",
        "|---|---|---|---|---|", *rows, "",
        f"- Machine: {os.cpu_count()} cores visible, {platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}; max RSS from `os.wait4` of each child process.",
        f"- Command: {cmd}" + (" where DIR holds the code before the upload budget "
                                "(`git archive f69dcef | tar -x -C DIR`)" if args.before else ""),
        f"- Measured {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.", ""])
    print(text)
    if not args.no_write:
        write_section(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
