"""Train page: TI-DPO as a separate process on the tiny model, live progress, Cancel through the trainer's stop
request, one job at a time, and sessions that do not see each other's job."""

from __future__ import annotations

import json
import time

import pytest
from apptools import FALLBACK_METHOD

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def train_page(new_app):
    at = new_app()
    at.switch_page("app_pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def submit(at, name: str, steps: int = 200):
    at.number_input(key="train_steps").set_value(steps)
    at.number_input(key="train_gamma_paper").set_value(0.0)  # no anchor sampling: faster steps
    at.number_input(key="train_maxlen_paper").set_value(64)
    at.text_input(key="train_name").set_value(name)
    at.button(key="FormSubmitter:train_form-Start training").click()
    return at.run()


def wait_for(at, predicate, timeout: float = 240.0, every: float = 1.0):
    """Rerun the session (as the page's 2 s refresh does) until predicate(at) holds."""
    end = time.time() + timeout
    while time.time() < end:
        at.run()
        if predicate(at):
            return at
        time.sleep(every)
    raise AssertionError("timed out waiting for the training job")


def progress_text(at) -> str:
    bars = at.get("progress")
    return bars[0].proto.text if bars else ""


@pytest.fixture()
def jobs_cleanup():
    yield
    from app.app_pages import pickers

    pickers.job_manager().shutdown()


def test_the_form_passes_weight_source_and_lora_to_the_trainer(new_app, app_env, jobs_cleanup):
    at = train_page(new_app)
    at.selectbox(key="train_weighting_paper").set_value("grad_x_input")
    at.selectbox(key="train_wtarget_paper").set_value("logprob")
    at.checkbox(key="train_lora_paper").check()
    submit(at, "w-run", steps=2)
    assert not at.error, [e.value for e in at.error]
    run = app_env / "w-run"
    wait_for(at, lambda _: (run / "config.json").exists())
    tidpo = json.loads((run / "config.json").read_text())["tidpo"]
    assert tidpo["weighting"] == "grad_x_input" and tidpo["weighting_target"] == "logprob"
    assert tidpo["use_lora"] is True and tidpo["weights_from"] is None


def test_bad_run_name_is_refused(new_app, app_env):
    at = train_page(new_app)
    submit(at, "../outside")
    [err] = at.error
    assert "run name" in err.value and "inside" in err.value
    assert not (app_env.parent / "outside").exists() and not app_env.exists()


@pytest.mark.slow
def test_start_watch_refuse_isolate_and_cancel(new_app, app_env, jobs_cleanup):
    a = train_page(new_app)
    submit(a, "a-run")
    assert not a.error, [e.value for e in a.error]
    assert any("Started a-run" in s.value.replace("\\", "") for s in a.success)  # as shown: escapes removed
    run = app_env / "a-run"
    # the job runs as its own process and reports progress and metrics as it goes
    wait_for(a, lambda at: "running, step" in progress_text(at) and len(at.get("plotly_chart")) == 3)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "running" and status["total_steps"] == 200 and status["step"] >= 1
    config = json.loads((run / "config.json").read_text())  # the form's knobs reached the trainer
    assert config["tidpo"]["gamma"] == 0.0 and config["tidpo"]["max_length"] == 64
    assert config["tidpo"]["lam"] == 0.7 and config["data"]["file"].endswith("sample_data/train.jsonl")
    assert "Cancel training" in [b.label for b in a.button]

    # a second session sees neither the job nor its controls, and cannot start another job meanwhile
    b = train_page(new_app)
    assert any("No training job started in this session" in c.value for c in b.caption)
    assert not [x for x in b.button if x.key == "train_cancel"]
    submit(b, "b-run")
    assert "already running" in b.error[0].value and "another session" in b.error[0].value
    assert not (app_env / "b-run").exists()
    # nor can the first session start a second job
    submit(a, "a-run-2")
    assert "already running" in a.error[0].value and "yours" in a.error[0].value

    # Cancel asks the trainer to stop: it finishes its step, saves a checkpoint and marks the run cancelled
    a.button(key="train_cancel").click().run()
    wait_for(a, lambda at: "ended" in " ".join(w.value for w in at.warning))
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "cancelled" and 1 <= status["step"] < 200
    assert not (run / "final").exists() and (run / "checkpoints").is_dir()
    assert any("cancelled" in w.value for w in a.warning)
    # a cancelled run is not offered as an "after" model
    a.switch_page("app_pages/before_after.py").run()
    assert any("No finished training run yet" in i.value for i in a.info)


def test_sessions_do_not_share_uploads(new_app, hostile_jsonl):
    a = new_app()
    b = new_app()
    a.selectbox(key="dataset").set_value("upload a file…").run()
    a.file_uploader(key="upload").upload("mine.jsonl", hostile_jsonl).run()
    assert a.selectbox(key="pair").value == "xss"
    b.run()
    assert b.selectbox(key="dataset").value == "sample: train" and b.selectbox(key="pair").value != "xss"
    b.selectbox(key="dataset").set_value("upload a file…").run()
    assert any("Upload a file" in i.value for i in b.info)  # b sees an empty uploader, not a's file
    assert a.session_state["_tiviz_session"] != b.session_state["_tiviz_session"]
    assert "_tiviz_tmp" not in b.session_state  # b has written nothing; a's folder is a's alone


@pytest.mark.slow
def test_a_finished_run_becomes_the_after_model(new_app, app_env, jobs_cleanup):
    at = train_page(new_app)
    submit(at, "short", steps=2)
    wait_for(at, lambda a: any("finished" in s.value for s in a.success))
    assert json.loads((app_env / "short" / "status.json").read_text())["state"] == "finished"
    at.run()  # the page refreshed itself once the job ended: the run is listed
    runs = [d.value for d in at.dataframe if "run" in d.value.columns]
    assert runs and runs[0]["run"].tolist() == ["short"] and runs[0]["state"].tolist() == ["finished"]
    at.selectbox(key="train_pick_run").set_value("short")
    at.button(key="train_compare").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="ba_run").value == "short"
    assert any(f"{FALLBACK_METHOD}_change" in b for b in [h.proto.body for h in at.html])
