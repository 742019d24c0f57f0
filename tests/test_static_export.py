"""Static export of the report's figures through plotly + kaleido (which drives Debian's Chromium): one file
per figure of the report, real PNG / SVG content."""

from __future__ import annotations

import shutil

import pytest

from tiviz.attribution import attribute
from tiviz.cli import main
from tiviz.report import export_figures, report_html
from tiviz.table import write_table
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer

pytest.importorskip("kaleido", reason="static export needs kaleido")
if not (shutil.which("chromium") or shutil.which("google-chrome")):
    pytest.skip("kaleido needs a Chrome or Chromium (scripts/setup-browser.sh installs Debian's)",
                allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table():
    return attribute(tiny_model(), tiny_pairs()[:2], "gradient,attention", tokenizer=tiny_tokenizer())


def test_every_report_figure_is_written(table, tmp_path):
    html = report_html(table)
    n = int(html.split('name="tiviz-figures" content="')[1].split('"')[0])
    paths = export_figures(table, tmp_path / "png")
    assert len(paths) == n and n > 0
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    svg = export_figures(table, tmp_path / "svg", "svg")
    assert all(p.read_text(encoding="utf-8").lstrip().startswith("<svg") for p in svg)


def test_cli_figures(table, tmp_path, capsys):
    t = write_table(table, tmp_path / "t.parquet")
    assert main(["report", "--table", str(t), "--figures", str(tmp_path / "figs"), "--figure-format", "svg"]) == 0
    assert "figures to" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "figs").iterdir())[0] == "fig-01.svg"
