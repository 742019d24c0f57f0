"""No code from data: the sources never unpickle, never eval, never trust remote code by default; a model
folder holding only pickled weights is refused without being opened."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tiviz.errors import ModelError

PACKAGE = Path(__file__).resolve().parents[2] / "tiviz"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal"}


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every construct in `source` that can run code hidden in data, as 'file:line: what'."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name and name.split(".")[0] in UNSAFE_MODULES:
                    found.append(f"{where}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if isinstance(func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
            found.append(f"{where}: {name}()")
        if owner == "torch" and name == "load":
            flag = kw.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        if name in ("read_pickle", "to_pickle") or (owner in ("np", "numpy") and name == "load"
                                                     and isinstance(kw.get("allow_pickle"), ast.Constant)
                                                     and kw["allow_pickle"].value is True):
            found.append(f"{where}: {owner or '?'}.{name} (pickle)")
        if owner == "yaml" and name == "load":
            found.append(f"{where}: yaml.load (use yaml.safe_load)")
        trc = kw.get("trust_remote_code")
        if isinstance(trc, ast.Constant) and trc.value is True:
            found.append(f"{where}: trust_remote_code=True")
    for node in ast.walk(tree):  # a default of True in a signature is as bad as passing it
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args[len(node.args.args) - len(node.args.defaults):] + node.args.kwonlyargs
            defaults = node.args.defaults + [d for d in node.args.kw_defaults]
            for arg, default in zip(args, defaults, strict=True):
                if arg.arg == "trust_remote_code" and isinstance(default, ast.Constant) and default.value is True:
                    found.append(f"{filename}:{node.lineno}: {node.name}(trust_remote_code=True) by default")
    return found


def test_the_audit_catches_what_it_looks_for():
    bad = """
import pickle
from dill import loads
import torch, yaml, numpy as np, pandas as pd
def load(path, trust_remote_code=True):
    torch.load(path)
    torch.load(path, weights_only=False)
    eval("1 + 1"); exec("x = 1")
    pd.read_pickle(path); np.load(path, allow_pickle=True); yaml.load(open(path))
    AutoModel.from_pretrained(path, trust_remote_code=True)
"""
    found = [hit.split(": ", 1)[1] for hit in unsafe_calls(bad)]
    assert sorted(found) == sorted([
        "imports pickle", "imports dill", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "eval()", "exec()", "pd.read_pickle (pickle)", "np.load (pickle)",
        "yaml.load (use yaml.safe_load)", "trust_remote_code=True", "load(trust_remote_code=True) by default"])
    ok = "import torch\ntorch.load(p, weights_only=True)\nmodel.eval()\nf(trust_remote_code=False)\n"
    assert unsafe_calls(ok) == []


def test_tiviz_sources_hold_no_code_from_data():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 15  # the whole package, not an empty glob
    found = [hit for f in files for hit in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(PACKAGE)))]
    assert found == []


@pytest.mark.parametrize("with_config", [False, True])
def test_pickled_weights_are_refused_unopened(tmp_path, monkeypatch, with_config):
    import torch

    from tiviz.models import load_model
    from tiviz.testing import tiny_model, tiny_tokenizer

    model = tiny_model(seed=0)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    if with_config:
        model.config.save_pretrained(tmp_path)
        tiny_tokenizer().save_pretrained(tmp_path)
    opened = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or {})
    with pytest.raises(ModelError, match="safetensors") as info:
        load_model(str(tmp_path), device="cpu")
    assert str(tmp_path) in str(info.value)
    assert opened == []  # the pickle was never unpickled
