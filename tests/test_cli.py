"""The CLI: fast help, clear errors without tracebacks, a full attribute run on a saved tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tiviz.cli import main
from tiviz.models import save_model
from tiviz.table import provenance, read_table
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer


def test_help_does_not_import_torch():
    code = "import sys; from tiviz.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for m in ("gradient", "grad_x_input", "integrated_gradients", "attention", "tidpo", "implicit_reward"):
        assert m in out


def test_bad_input_is_one_message_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n', encoding="utf-8")
    assert main(["attribute", "--pairs", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 1, field 'rejected': missing field" in err and "Traceback" not in err
    assert main(["attribute", "--pairs", str(bad), "--n-steps", "0"]) == 2
    assert "n_steps" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    save_model(tiny_model(), folder, tokenizer=tiny_tokenizer())
    return folder


def test_attribute_end_to_end(tmp_path, tiny_folder, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in tiny_pairs()), encoding="utf-8")
    out = tmp_path / "res.csv"
    code = main(["attribute", "--pairs", str(pairs), "--model", str(tiny_folder), "--methods", "gradient,tidpo",
                 "--out", str(out), "--batch-size", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "s/pair" in printed
    df = read_table(out)
    assert set(df.pair_id) == {p["id"] for p in tiny_pairs()} and set(df.method) == {"gradient", "tidpo"}
    prov = provenance(df)
    assert prov["data"]["file"] == str(pairs) and len(prov["data"]["sha256"]) == 64
    assert prov["settings"]["batch_size"] == 3


def test_attribute_reuses_the_disk_cache_unless_told_not_to(tmp_path, tiny_folder, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in tiny_pairs()), encoding="utf-8")
    cache = tmp_path / "cache"
    args = ["attribute", "--pairs", str(pairs), "--model", str(tiny_folder), "--methods", "gradient,attention",
            "--cache-dir", str(cache)]
    assert main([*args, "--out", str(tmp_path / "a.parquet")]) == 0
    assert "from the cache" not in capsys.readouterr().out
    n = len(tiny_pairs())
    assert len(list(cache.rglob("*.parquet"))) == 2 * n
    assert main([*args, "--out", str(tmp_path / "b.parquet")]) == 0
    assert f"{2 * n} of {2 * n} (pair, method) results from the cache" in capsys.readouterr().out
    a, b = read_table(tmp_path / "a.parquet"), read_table(tmp_path / "b.parquet")
    assert provenance(b)["cache"] == {"folder": str(cache), "reused": 2 * n, "computed": 0}
    assert a[["token", "score"]].equals(b[["token", "score"]])
    assert main([*args, "--no-cache", "--out", str(tmp_path / "c.parquet")]) == 0
    assert "cache" not in provenance(read_table(tmp_path / "c.parquet"))
