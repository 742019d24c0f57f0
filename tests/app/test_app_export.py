"""Export page: the current selection's table as Parquet / CSV / JSON with provenance, and the report."""

from __future__ import annotations

import pytest

from tiviz.table import read_table


def test_export_pair_table_round_trips(new_app, tmp_path):
    at = new_app()
    at.switch_page("app_pages/methods.py").run()
    at.multiselect(key="methods_list").set_value(["gradient", "attention"]).run()
    at.switch_page("app_pages/inspect_pair.py").run()  # another page in between: the choice is kept
    at.switch_page("app_pages/export.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.caption[0].value.startswith("2 methods (gradient, attention)")
    assert "Download tiviz-pair.parquet" in [b.label for b in at.get("download_button")]
    from app import state

    ds = state.load_sample("sample: train")
    table = state.cached_attribution(state.base_choice(), ds, [ds.ids[0]], ["gradient", "attention"],
                                     {"n_steps": 16})
    assert table is not None  # the page exported what the Methods page computed
    for fmt in ("parquet", "csv", "json"):
        path = tmp_path / f"t.{fmt}"
        path.write_bytes(state.table_bytes(table, fmt, tmp_path))
        back = read_table(path)
        assert len(back) == len(table) and set(back["method"]) == {"gradient", "attention"}
        assert back.attrs["tiviz"]["data"]["sha256"] == ds.key
        assert back["score"].to_numpy() == pytest.approx(table["score"].to_numpy())
    at.switch_page("app_pages/methods.py").run()
    assert at.multiselect(key="methods_list").value == ["gradient", "attention"]


def test_export_dataset_selection_needs_a_run(new_app):
    at = new_app()
    at.switch_page("app_pages/export.py").run()
    at.radio(key="export_what").set_value("dataset").run()
    assert not at.exception
    assert at.button(key="export_run").label.startswith("Attribute")
    at.button(key="export_run").click().run()
    assert not at.exception
    assert "Download tiviz-dataset.parquet" in [b.label for b in at.get("download_button")]


def test_report_of_hostile_pairs_is_escaped(new_app, hostile_jsonl, finished_run):
    from pathlib import Path

    at = new_app()
    at.selectbox(key="dataset").set_value("upload a file…").run()
    at.file_uploader(key="upload").upload("hostile.jsonl", hostile_jsonl).run()
    at.switch_page("app_pages/methods.py").run()
    at.multiselect(key="methods_list").set_value(["gradient", "tidpo"]).run()
    at.switch_page("app_pages/export.py").run()
    at.selectbox(key="export_after").set_value("trained").run()
    at.button(key="export_report_build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Download tiviz-report.html" in [b.label for b in at.get("download_button")]
    report = (Path(at.session_state["_tiviz_tmp"]) / "tiviz-report.html").read_text(encoding="utf-8")
    for raw in ("<script>alert('p')", "<img src=x onerror", "</div><script>alert('r')"):
        assert raw not in report
    assert "Say &lt;script&gt;alert(&#x27;p&#x27;)&lt;/script&gt; please" in report  # the prompt, escaped
