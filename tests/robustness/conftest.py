"""Fixtures of the robustness suite, and a count of the inputs its fuzzers generated (printed at the end)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "corpus"
FUZZ_COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="session")
def fuzz_counter() -> Counter[str]:
    """Each fuzz test adds one per generated input under its own name; the totals end the pytest report."""
    return FUZZ_COUNTS


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not FUZZ_COUNTS:
        return
    total = sum(FUZZ_COUNTS.values())
    terminalreporter.write_sep("-", f"robustness fuzzing: {total} generated inputs")
    for name, n in sorted(FUZZ_COUNTS.items()):
        terminalreporter.write_line(f"  {name:<40} {n:>6}")
    out = os.environ.get("TIVIZ_FUZZ_COUNTS")
    if out:  # for the docs: TIVIZ_FUZZ_COUNTS=counts.json pytest tests/robustness
        Path(out).write_text(json.dumps({"total": total, **dict(sorted(FUZZ_COUNTS.items()))}, indent=1))


@pytest.fixture(scope="session")
def corpus_texts() -> list[dict]:
    """The nasty strings of corpus/texts.json; `repeat` entries are expanded (very long lines)."""
    items = json.loads((CORPUS / "texts.json").read_text(encoding="utf-8"))
    for item in items:
        item["text"] = item["text"] * item.get("repeat", 1)
    return items


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny model and tokenizer saved as a safetensors folder, for CLI runs in subprocesses."""
    from tiviz.models import save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    return save_model(tiny_model(seed=0), tmp_path_factory.mktemp("tiny") / "model", tokenizer=tiny_tokenizer())


@pytest.fixture(scope="session")
def smol_tokenizer(smol):
    """The real SmolLM2 tokenizer, from the session's one `load_model()` (tests/conftest.py `smol`)."""
    return smol.tokenizer
