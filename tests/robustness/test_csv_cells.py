"""CSV cells: JSON is decoded only in the cells meant to hold messages (prompt, chosen, rejected) or
rationales, and only when they look like a message list (or a list of strings); a plain-text answer that looks
like JSON stays text, and every decoding error is a `DataError` naming the line and the field."""

from __future__ import annotations

import csv
import json

import pytest

from tiviz.data import load_pairs
from tiviz.errors import DataError

DEEP = "[" * 3000 + "]" * 3000
HUGE = "9" * 5000


def write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def messages(role: str, content_json: str) -> str:
    """A message-list cell whose content is raw JSON text (a number, a nested list)."""
    return f'[{{"role": "{role}", "content": {content_json}}}]'


@pytest.mark.parametrize("answer", ["[1, 2, 3]", "[]", "[see above]", DEEP, "[" + HUGE + "]", '["a", "b"]'])
def test_plain_text_answers_that_look_like_json_stay_text(tmp_path, answer):
    path = tmp_path / "p.csv"
    write_csv(path, [{"prompt": "List three numbers.", "chosen": answer, "rejected": "no", "score": "[1, 2]"}])
    (pair,) = load_pairs(path)
    assert pair.chosen == answer and pair.extra["score"] == "[1, 2]"
    assert not pair.conversational


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
@pytest.mark.parametrize("content", [DEEP, HUGE, "{oops"])
def test_a_message_cell_that_does_not_decode_names_the_line_and_field(tmp_path, field, content):
    row = {"prompt": messages("user", '"Hi"'), "chosen": messages("assistant", '"Hello"'),
           "rejected": messages("assistant", '"Go"')}
    row[field] = messages("assistant" if field != "prompt" else "user", content)
    good = {"prompt": messages("user", '"Q"'), "chosen": messages("assistant", '"A"'),
            "rejected": messages("assistant", '"B"')}
    path = tmp_path / "p.csv"
    write_csv(path, [good, row])
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert (err.value.source, err.value.line, err.value.field) == (str(path), 3, field)
    assert "invalid JSON" in str(err.value)


@pytest.mark.parametrize("value", ['["' + "x" * 10 + '", ' + HUGE + "]", '["a", ' + DEEP + "]", '["a", '])
def test_a_rationale_cell_that_does_not_decode_names_the_line_and_field(tmp_path, value):
    path = tmp_path / "p.csv"
    write_csv(path, [{"prompt": "Q", "chosen": "a yes", "rejected": "no", "rationale_chosen": value}])
    with pytest.raises(DataError) as err:
        load_pairs(path)
    assert (err.value.line, err.value.field) == (2, "rationale_chosen")


def test_message_lists_and_rationale_lists_still_decode(tmp_path):
    path = tmp_path / "p.csv"
    write_csv(path, [{"prompt": messages("user", '"Hi"'), "chosen": messages("assistant", '"Hello there"'),
                      "rejected": messages("assistant", '"Go"'), "rationale_chosen": json.dumps(["Hello"]),
                      "rationale_rejected": "[Go]"}])
    with pytest.raises(DataError, match="not a substring"):  # "[Go]" is one plain-text rationale, not a list
        load_pairs(path)
    write_csv(path, [{"prompt": messages("user", '"Hi"'), "chosen": messages("assistant", '"Hello [there]"'),
                      "rejected": messages("assistant", '"Go"'), "rationale_chosen": json.dumps(["Hello"]),
                      "rationale_rejected": "Go"}])
    (pair,) = load_pairs(path)
    assert pair.conversational and pair.chosen == [{"role": "assistant", "content": "Hello [there]"}]
    assert pair.rationale_chosen == ("Hello",) and pair.rationale_rejected == ("Go",)


def test_a_plain_rationale_in_brackets_is_one_rationale(tmp_path):
    path = tmp_path / "p.csv"
    write_csv(path, [{"prompt": "Q", "chosen": "see [1, 2] here", "rejected": "no", "rationale_chosen": "[1, 2]"}])
    (pair,) = load_pairs(path)
    assert pair.rationale_chosen == ("[1, 2]",)
