"""Options are checked before any work: a bad `--out`, a negative `--limit` or a run name with a trailing
newline is refused up front, naming the option, instead of after the attribution (or never)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tiviz import cli
from tiviz.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def no_work(monkeypatch):
    """Fails the test if the command loads a model or attributes anything."""
    import tiviz.attribution
    import tiviz.models

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(tiviz.models, "load_model", refuse)
    monkeypatch.setattr(tiviz.attribution, "attribute", refuse)


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"id": f"p{i}", "prompt": "Q?", "chosen": "yes", "rejected": "no"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_out_with_a_bad_suffix_fails_before_attribution(no_work, pairs_file, tmp_path, capsys):
    out = tmp_path / "x.txt"
    assert cli.main(["attribute", "--pairs", str(pairs_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'out'" in err and "x.txt" in err and ".parquet" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["attribute", "evaluate"])
@pytest.mark.parametrize("limit", ["-1", "0"])
def test_limit_below_one_is_refused(no_work, pairs_file, command, limit, capsys):
    assert cli.main([command, "--pairs", str(pairs_file), "--limit", limit]) == 2
    err = capsys.readouterr().err
    assert "'limit'" in err and limit in err and ">= 1" in err


def test_limit_check_raises_config_error():
    from tiviz.commands import check_limit

    with pytest.raises(ConfigError, match="'limit'"):
        check_limit(-1)
    check_limit(None)
    check_limit(1)


def test_run_name_with_a_trailing_newline_is_refused(tmp_path):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app import state

    for name in ("run\n", "run\n\n", "ok\nx"):
        with pytest.raises(ConfigError, match="run name"):
            state.inside(tmp_path, name, what="run name")
    assert state.inside(tmp_path, "run-1", what="run name") == (tmp_path / "run-1").resolve()
