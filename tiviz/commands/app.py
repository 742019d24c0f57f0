"""`tiviz app`: open the Streamlit app (inspect, compare, train) on the offline default model or another one."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def app_script() -> Path:
    """The app's entry script, found next to the package in a source checkout (the app is not installed)."""
    return Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="open the tiviz app in the browser",
                       description="Run the Streamlit app: inspect pairs, compare methods, train with TI-DPO, "
                                   "compare before and after, export tables and reports.")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    p.add_argument("--address", default="localhost", help="address to bind (default: localhost)")
    p.add_argument("--model", default=None, help="model the app explains (default: $TIVIZ_APP_MODEL or the offline "
                   "smollm2-135m-instruct); a hub id, local folder or .gguf file")
    p.add_argument("--runs-dir", default=None, help="folder of training runs (default: $TIVIZ_RUNS_DIR or runs/)")
    p.add_argument("--max-upload-mb", type=int, default=20, help="largest upload accepted, in MB (default: 20)")
    p.set_defaults(func=run)


def build_command(args: argparse.Namespace) -> list[str]:
    """The `streamlit run` command line for these arguments."""
    return [sys.executable, "-m", "streamlit", "run", str(app_script()),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.port", str(args.port), "--server.address", args.address,
            "--server.maxUploadSize", str(args.max_upload_mb)]


def build_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.model:
        env["TIVIZ_APP_MODEL"] = args.model
    if args.runs_dir:
        env["TIVIZ_RUNS_DIR"] = str(Path(args.runs_dir).resolve())
    env["TIVIZ_APP_MAX_UPLOAD_MB"] = str(args.max_upload_mb)
    return env


def run(args: argparse.Namespace) -> int:
    from tiviz.errors import TivizError

    script = app_script()
    if not script.is_file():
        raise TivizError(f"{script}: the app is not here. Fix: run `tiviz app` from a source checkout of tiviz "
                         "(the app ships with the repository, not the package)")
    print(f"tiviz app: http://{args.address}:{args.port}  (Ctrl-C to stop)", file=sys.stderr)
    cmd = build_command(args)
    # become the Streamlit process, so that SIGTERM and Ctrl-C reach the server (which then ends its training
    # jobs, app/jobs.py) instead of killing a wrapper and leaving the server and its jobs running
    os.execve(cmd[0], cmd, build_env(args))
