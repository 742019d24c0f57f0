"""Training from the app: the preset form that starts `tiviz train` as a separate process, this session's job
(live progress, loss / reward-margin / accuracy charts, Cancel) and the finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import jobs, state
from app.app_pages.pickers import AFTER_RUN, damaged_runs, finished_runs, job_manager
from tiviz import viz
from tiviz.errors import TivizError


def train_form(dataset: state.Dataset) -> None:
    """Preset plus the main knobs; Start launches `tiviz train` as a separate process."""
    from tiviz.training.config import PRESET_HELP, config_from_preset, list_presets, weighting_choices

    preset = st.selectbox("Preset", list_presets(), key="train_preset", format_func=lambda p: f"{p}: {PRESET_HELP[p]}")
    base = config_from_preset(preset)
    with st.form("train_form"):
        c = st.columns(4)
        max_steps = c[0].number_input("Steps", 1, 10_000, 10, key="train_steps")
        batch_size = c[1].number_input("Batch size (pairs)", 1, 64, min(base.batch_size, 2), key=f"train_batch_{preset}")
        lr = c[2].number_input("Learning rate", 1e-8, 1e-2, base.learning_rate, step=1e-6, format="%.1e",
                               key=f"train_lr_{preset}",
                               help="The preset's value; a short demo run on a CPU shows more change at 1e-5")
        beta = c[3].number_input("β", 0.01, 5.0, base.beta, step=0.05, key=f"train_beta_{preset}")
        c = st.columns(4)
        lam = c[0].number_input("λ (gradient vs prior)", 0.0, 1.0, base.lam, step=0.1, key=f"train_lam_{preset}")
        gamma = c[1].number_input("γ (triplet)", 0.0, 10.0, base.gamma, step=0.05, format="%.3f",
                                  key=f"train_gamma_{preset}")
        max_length = c[2].number_input("Max length (tokens)", 64, 2048, min(base.max_length, 256), step=64,
                                       key=f"train_maxlen_{preset}")
        name = c[3].text_input("Run name", placeholder="automatic", key="train_name",
                               help="Letters, digits, '.', '_' and '-'; the run is saved in the runs folder")
        c = st.columns(4)
        choices = list(weighting_choices())
        weighting = c[0].selectbox("Token weights from", choices, index=choices.index(base.weighting),
                                   key=f"train_weighting_{preset}",
                                   help="An attribution method, uniform (DPO) or random; through the hybrid step")
        target = c[1].selectbox("Target (gradient methods)", ["max_logit", "logprob", "margin", "reward"],
                                key=f"train_wtarget_{preset}")
        weights_from = c[2].text_input("Weights from (run folder or model)", placeholder="online: the policy",
                                       key="train_weights_from",
                                       help="Compute the weights once with this scorer instead of at every step")
        lora = c[3].checkbox("LoRA (r 16)", value=base.use_lora, key=f"train_lora_{preset}",
                             help="Train a small adapter instead of every weight: much faster steps on a CPU")
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        overrides = {"batch_size": int(batch_size), "learning_rate": float(lr), "beta": float(beta),
                     "lam": float(lam), "gamma": float(gamma), "max_length": int(max_length),
                     "max_prompt_length": int(max_length) // 2, "logging_steps": 1, "weighting": weighting,
                     "weighting_target": target, "use_lora": bool(lora)}
        if weights_from.strip():
            overrides["weights_from"] = weights_from.strip()
        start_training(dataset, preset, int(max_steps), overrides, name.strip())


def start_training(dataset: state.Dataset, preset: str, max_steps: int, overrides: dict[str, Any],
                   name: str = "") -> None:
    """Validate the settings, then start the job; refusals and bad settings are shown, not raised."""
    import time

    from tiviz.training.config import config_from_preset

    try:
        config_from_preset(preset, max_steps=max_steps, **overrides)
        run_name = name or time.strftime("run-%Y%m%d-%H%M%S")
        out = state.inside(state.runs_dir(), run_name, what="run name")
        state.runs_dir().mkdir(parents=True, exist_ok=True)
        req = jobs.TrainRequest(pairs=Path(dataset.path), model=state.training_model_arg(), preset=preset,
                                out=out, max_steps=max_steps, overrides=overrides)
        job_manager().start(state.session_id(), req)
        st.success(f"Started {state.md_literal(run_name)}.")
    except TivizError as err:
        st.session_state["_train_error"] = state.describe_error(err)
        st.error(st.session_state["_train_error"])


def job_panel() -> None:
    """This session's job: live (refreshing itself every 2 s) while it runs, its outcome once it ended."""
    job = job_manager().job_of(state.session_id())
    if job is None:
        st.caption("No training job started in this session.")
    elif job.alive():
        _live_job()
    else:
        _job_view(job)


@st.fragment(run_every=2.0)
def _live_job() -> None:
    job = job_manager().job_of(state.session_id())
    if job is None:
        return
    job.enforce_stop()
    _job_view(job)
    if not job.alive():
        st.rerun()  # the job ended: redraw the page, with the runs list, once (and stop refreshing)


def job_sidebar() -> None:
    """This session's running job on every page: its progress and Cancel (`JobManager.cancel`)."""
    job = job_manager().job_of(state.session_id())
    if job is None or not job.alive():
        return
    status = job.status()
    with st.sidebar:
        st.text(f"Training {job.name}: {status.get('state')}, step {status.get('step') or 0} of "
                f"{status.get('total_steps') or '?'}")
        if st.button("Cancel training", key="sidebar_cancel", disabled=job.stop_requested is not None):
            job_manager().cancel(state.session_id())
            st.rerun()


def _job_view(job: jobs.Job) -> None:
    """Progress, the loss / reward-margin / accuracy charts, Cancel while it runs, the outcome after."""
    status = job.status()
    if job.adopted:
        st.caption("This job was started before the app restarted; any session may cancel it.")
    step, total = status.get("step") or 0, status.get("total_steps") or 0
    frac = min(step / total, 1.0) if total else 0.0
    st.progress(frac, text=state.md_literal(f"{job.name}: {status.get('state', '?')}, step {step} of {total or '?'}"))
    metrics = job.metrics()
    if len(metrics):
        cols = st.columns(3)
        for col, name in zip(cols, jobs.MAIN_METRICS, strict=True):
            with col:
                st.plotly_chart(viz.metrics_figure(metrics, [name], title=name), key=f"job_chart_{name}")
    else:
        st.caption("Waiting for the first logged step…")
    if job.alive():
        if st.button("Cancel training", key="train_cancel", disabled=job.stop_requested is not None):
            how = job_manager().cancel(state.session_id())
            st.info("Asked the trainer to stop: it saves a checkpoint after this step and exits."
                    if how == "request" else "Training process terminated.")
    elif status.get("state") == "finished" and status.get("returncode") == 0:
        st.success(f"{state.md_literal(job.name)} finished: compare it on the Before / after page.")
    else:
        st.warning(state.md_literal(f"{job.name} ended ({status.get('state')}, exit code {status.get('returncode')})."))
    with st.expander("Trainer log"):
        st.code(job.log_tail() or "(empty)", language=None)


def runs_table() -> None:
    """The finished runs, and a button that opens one on the Before / after page; damaged runs with why."""
    for r in damaged_runs():
        st.warning("A run's saved model is damaged and cannot be loaded:")
        st.code(r.problem, language=None)
    runs = finished_runs()
    if not runs:
        st.caption(f"No finished runs in {state.md_literal(state.runs_dir())} yet.")
        return
    import datetime as dt

    st.dataframe(pd.DataFrame([{"run": r.name, "state": r.state, "steps": r.step,
                                "finished at": dt.datetime.fromtimestamp(r.modified).strftime("%Y-%m-%d %H:%M")}
                               for r in runs]), hide_index=True, key="runs_table")
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    picked = left.selectbox("Run", [r.name for r in runs], key="train_pick_run")
    if right.button("Compare before / after", key="train_compare"):
        st.session_state[AFTER_RUN] = picked
        st.switch_page("app_pages/before_after.py")
    st.caption("A finished run can also be picked as the model on Inspect (the base model is then its reference).")

