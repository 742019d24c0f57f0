"""Uploads and paths (issue 7): bad files give a readable error naming file, line, field and fix; uploads are
size-limited, parsed not executed, written only into the session's temporary folder; hostile text renders as
text; names given in the app cannot leave the data and runs folders."""

from __future__ import annotations

import html
import json
import os

import pytest
from apptools import (
    FALLBACK_METHOD,
    HOSTILE_CHOSEN,
    HOSTILE_PROMPT,
    HOSTILE_REJECTED,
    html_bodies,
    token_blocks,
)

from tiviz.errors import ConfigError, DataError


def upload(at, name: str, data: bytes):
    at.selectbox(key="dataset").set_value("upload a file…").run()
    at.file_uploader(key="upload").upload(name, data, "application/octet-stream")
    return at.run()


def test_bad_file_shows_file_line_field_and_fix(new_app):
    at = new_app()
    bad = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n'
    upload(at, "my pairs.jsonl", bad)
    assert not at.exception
    [err] = at.error
    assert "my pairs.jsonl" in err.value.replace("\\", "")
    assert "- line: 2" in err.value and "- field: rejected" in err.value and "- fix:" in err.value
    assert any("Choose a dataset" in i.value for i in at.info)  # the pages wait for a valid dataset


def test_oversize_upload_is_refused(new_app, monkeypatch):
    monkeypatch.setenv("TIVIZ_APP_MAX_UPLOAD_MB", "0.001")  # about 1 kB
    at = new_app()
    upload(at, "big.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 40)
    [err] = at.error
    assert "over the 0 MB limit" in err.value.replace("\\", "") and "TIVIZ\\_APP\\_MAX\\_UPLOAD\\_MB" in err.value
    assert not os.listdir(at.session_state["_tiviz_tmp"])  # refused before anything was written


def test_valid_upload_is_inspected_and_kept_in_the_session_folder(new_app, hostile_jsonl):
    at = new_app()
    upload(at, "../../escape.jsonl", hostile_jsonl)
    assert not at.exception and not at.error
    assert at.selectbox(key="pair").value == "xss"
    folder = at.session_state["_tiviz_tmp"]
    written = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    assert written and all(os.path.dirname(w) == folder for w in written)
    assert os.path.basename(written[0]).startswith("escape-")  # the name's folders are dropped


def test_hostile_text_renders_escaped(new_app, hostile_jsonl):
    at = new_app()
    upload(at, "hostile.jsonl", hostile_jsonl)
    bodies = html_bodies(at)
    joined = "\n".join(bodies)
    assert "<script" not in joined.lower() and "<img" not in joined.lower() and "</div><script" not in joined
    assert "&lt;script&gt;alert(&#x27;p&#x27;)&lt;/script&gt;" in joined  # the prompt, as text
    assert HOSTILE_PROMPT in html.unescape(joined)  # shown verbatim, as text
    blocks = token_blocks(at)
    assert blocks[("chosen", FALLBACK_METHOD)] == HOSTILE_CHOSEN and blocks[("rejected", FALLBACK_METHOD)] == HOSTILE_REJECTED
    for md in at.markdown:  # nothing from the dataset reaches markdown unescaped
        assert "<script" not in md.value and "javascript:" not in md.value
    at.switch_page("app_pages/methods.py").run()
    assert not at.exception
    assert "<script" not in "\n".join(html_bodies(at)).lower()


def test_error_text_from_the_data_cannot_inject_markdown(new_app):
    at = new_app()
    row = {"prompt": "p", "chosen": "safe", "rejected": "r", "rationale_chosen": ["[x](javascript:alert(1))"]}
    upload(at, "[evil](javascript:alert(1)).jsonl", (json.dumps(row) + "\n").encode())
    [err] = at.error
    assert "](javascript" not in err.value  # brackets and parentheses are backslash-escaped
    assert r"\[x\]\(javascript\:alert\(1\)\)" in err.value


def test_load_upload_direct(tmp_path):
    from app import state

    ds = state.load_upload("/etc/../../x/pairs.csv", b"prompt,chosen,rejected\nq,a,b\n", tmp_path)
    assert [p.id for p in ds.pairs] and ds.pairs[0].chosen == "a"
    assert [f.parent for f in tmp_path.iterdir()] == [tmp_path]
    with pytest.raises(DataError) as info:
        state.load_upload("p.csv", b"prompt,chosen\nq,a\n", tmp_path)
    assert info.value.source == "p.csv" and info.value.line == 2 and info.value.field == "rejected"
    with pytest.raises(DataError, match=r"unsupported file type '\.py'"):  # Streamlit's filter is checked again
        state.load_upload("run_me.py", b"import os", tmp_path)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/etc", "", "x\x00y", "~root", "a\\b"])
def test_names_cannot_escape(tmp_path, name):
    from app import state

    with pytest.raises(ConfigError):
        state.inside(tmp_path, name)


def test_symlink_out_is_refused(tmp_path):
    from app import state

    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "runs"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ConfigError):
        state.inside(root, "link")
    assert state.inside(root, "ok-run_1.2") == (root / "ok-run_1.2").resolve()
