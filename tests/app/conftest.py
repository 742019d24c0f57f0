"""App tests: the Streamlit app driven by AppTest on the tiny model (saved once to a folder that TIVIZ_APP_MODEL
names, as a user names any model), a fresh runs folder and cache folder per test, and a finished fake run to
compare against."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
from apptools import HOSTILE_CHOSEN, HOSTILE_PROMPT, HOSTILE_REJECTED

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `import app` must find the repository's app package
    sys.path.insert(0, str(ROOT))

ENTRY = ROOT / "app" / "streamlit_app.py"


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory) -> Path:
    """`tiviz.testing.tiny_model(seed=0)` and its tokenizer saved as a model folder: the app's model in tests."""
    from tiviz.models import LoadedModel, save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-app-model")
    save_model(LoadedModel(tiny_model(seed=0), tiny_tokenizer(), "tiny"), folder)
    return folder


@pytest.fixture(autouse=True)
def no_quality_ranking(tmp_path, monkeypatch):
    """The method pickers open on a known method: no quality ranking (so the fallback, gradient), whatever ranking
    the package ships; the tests of the ranking write their own (`tiviz.evaluation.method_ranking`)."""
    from tiviz.evaluation import method_ranking

    monkeypatch.setattr(method_ranking, "RANKING_FILE", tmp_path / "no-quality-ranking.json")


@pytest.fixture()
def app_env(tmp_path, monkeypatch, tiny_model_folder):
    """Environment of one app: the tiny model, its own runs folder and cache folder. Returns the runs folder."""
    runs = tmp_path / "runs"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # session folders land in the test's tmp_path
    monkeypatch.setenv("TIVIZ_APP_MODEL", str(tiny_model_folder))
    monkeypatch.setenv("TIVIZ_RUNS_DIR", str(runs))
    monkeypatch.setenv("TIVIZ_CACHE_DIR", str(tmp_path / "cache"))
    return runs


@pytest.fixture()
def new_app(app_env):
    """A factory of fresh app sessions (each an AppTest), already run once on the default page."""
    from streamlit.testing.v1 import AppTest

    from app import state

    state.result_cache.clear()  # each test computes what it shows (models stay cached: they are read-only)

    def make() -> AppTest:
        at = AppTest.from_file(str(ENTRY), default_timeout=180)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make


@pytest.fixture()
def finished_run(app_env):
    """A finished run in the runs folder: the tiny model with other random weights (seed 1) in final/."""
    from tiviz.models import LoadedModel, save_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    run = app_env / "trained"
    save_model(LoadedModel(tiny_model(seed=1), tiny_tokenizer(), "tiny-seed1"), run / "final")
    (run / "status.json").write_text(json.dumps({"state": "finished", "step": 3, "total_steps": 3, "pid": 0}))
    return run


@pytest.fixture()
def hostile_jsonl() -> bytes:
    rows = [{"id": "xss", "prompt": HOSTILE_PROMPT, "chosen": HOSTILE_CHOSEN, "rejected": HOSTILE_REJECTED}]
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
