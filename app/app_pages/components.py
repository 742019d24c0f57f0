"""Widgets shared by the pages (not a page itself): the sidebar's dataset and pair pickers, model and method
pickers, progress around long work, and the shaded view of a pair. Every widget has an explicit key; every
piece of dataset text reaches the page escaped (`tiviz.safe_html.escape_text` for HTML, `tiviz.safe_html.escape_markdown`, as `state.md_literal`, for
markdown), or through widgets that show plain text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from app import jobs, state
from tiviz import viz
from tiviz.data import PreferencePair
from tiviz.errors import TivizError

METHOD_ORDER = ("tidpo", "gradient", "grad_x_input", "integrated_gradients", "attention", "implicit_reward")
VALUE_HELP = {"score": "the method's raw score (signed methods: blue lowers, red raises the target)",
              "weight": "|score| normalised to sum 1 over the response"}


# ---------------------------------------------------------------------------------------------- sidebar


def kept(key: str) -> str:
    """A widget key whose value survives visits to other pages (Streamlit drops the state of widgets a run
    does not draw): restores the value saved by `save_kept` and returns the key, for `key=ui.kept("...")`."""
    names = st.session_state.setdefault("_kept_keys", set())
    names.add(key)
    if key not in st.session_state and f"_kept_{key}" in st.session_state:
        st.session_state[key] = st.session_state[f"_kept_{key}"]
    return key


def save_kept() -> None:
    """Copy the kept widgets' values aside, at the start of every run (before another page drops them)."""
    for key in st.session_state.get("_kept_keys", ()):
        if key in st.session_state:
            st.session_state[f"_kept_{key}"] = st.session_state[key]


def sidebar() -> None:
    """Dataset (a sample or an upload) and pair, shared by every page; the model in use below them."""
    save_kept()
    if "dataset" not in st.session_state:
        _from_query_params()
    with st.sidebar:
        st.markdown("### Data")
        options = [*state.SAMPLES, state.UPLOAD]
        choice = st.selectbox("Dataset", options, key="dataset",
                              help="The bundled sample pairs, or your own JSONL / JSON / CSV / Parquet file")
        if choice == state.UPLOAD:
            _upload_widget()
        else:
            st.session_state["_dataset"] = state.load_sample(choice)
        dataset = current_dataset()
        if dataset is not None:
            ids = dataset.ids
            if st.session_state.get("pair") not in ids:
                st.session_state["pair"] = ids[0]
            st.selectbox("Pair", ids, key="pair", format_func=lambda i: _pair_label(dataset.pair(i)),
                         help=f"{len(ids)} pairs in {state.md_literal(dataset.name)}")
        st.divider()
        st.caption(f"Model: {state.md_literal(state.base_model_id())}  \n"
                   f"Runs folder: {state.md_literal(state.runs_dir().name + '/')}")


def _from_query_params() -> None:
    """A new session may open on a given sample and pair: `?dataset=test&pair=fact-001` (links, benchmarks)."""
    name = f"sample: {st.query_params.get('dataset', 'train')}"
    if name in state.SAMPLES:
        st.session_state["dataset"] = name
        pair = st.query_params.get("pair")
        if pair in state.load_sample(name).ids:
            st.session_state["pair"] = pair


def _upload_widget() -> None:
    limit_mb = state.max_upload_bytes() / 2**20
    up = st.file_uploader(f"Preference pairs (up to {limit_mb:.0f} MB)", type=state.UPLOAD_TYPES, key="upload",
                          help="One pair per row with prompt, chosen, rejected (TRL's schema); optional id, "
                               "rationale_chosen, rationale_rejected")
    if up is None:
        st.session_state.pop("_dataset", None)
        st.session_state.pop("_upload_error", None)
        st.info("Upload a file to inspect its pairs.")
        return
    marker = (up.file_id, up.name, up.size)
    if st.session_state.get("_upload_marker") != marker:
        st.session_state["_upload_marker"] = marker
        handle_upload(up.name, up.getvalue())
    if st.session_state.get("_upload_error"):
        st.error(st.session_state["_upload_error"])


def handle_upload(filename: str, data: bytes) -> None:
    """Load an upload into this session (its dataset, or its readable error in session state)."""
    try:
        st.session_state["_dataset"] = state.load_upload(filename, data, state.session_dir())
        st.session_state["_upload_error"] = None
    except TivizError as err:
        st.session_state.pop("_dataset", None)
        st.session_state["_upload_error"] = state.describe_error(err)


def _pair_label(p: PreferencePair) -> str:
    prompt = " ".join(p.prompt_text().split())
    cat = p.extra.get("category")
    head = f"{p.id} [{cat}]" if isinstance(cat, str) else p.id
    return f"{head} · {prompt[:48]}{'…' if len(prompt) > 48 else ''}"


def current_dataset() -> state.Dataset | None:
    return st.session_state.get("_dataset")


def require_pair() -> tuple[state.Dataset, PreferencePair]:
    """The dataset and pair chosen in the sidebar; stops the page with a hint when there is none."""
    dataset = current_dataset()
    if dataset is None:
        st.info("Choose a dataset in the sidebar (or upload one) to start.")
        st.stop()
    pid = st.session_state.get("pair")
    if pid not in dataset.ids:
        pid = dataset.ids[0]
    return dataset, dataset.pair(pid)


def require_dataset() -> state.Dataset:
    dataset = current_dataset()
    if dataset is None:
        st.info("Choose a dataset in the sidebar (or upload one) to start.")
        st.stop()
    return dataset


# ---------------------------------------------------------------------------------------------- pickers


@st.cache_resource(show_spinner=False)
def job_manager() -> jobs.JobManager:
    """The process-wide training jobs (one may run at a time)."""
    return jobs.JobManager(max_running=1)


def finished_runs() -> list[jobs.RunInfo]:
    """Finished runs in the runs folder, minus other sessions' jobs in progress."""
    hidden = job_manager().running_elsewhere(state.session_id())
    return [r for r in jobs.list_runs(state.runs_dir(), exclude=hidden) if r.finished]


def model_picker(key: str, label: str = "Model") -> state.ModelChoice:
    """The base model, or a finished run (then the base model is the reference for implicit rewards)."""
    runs = [r.name for r in finished_runs()]
    options = ["__base__", *runs]
    kept(key)
    if st.session_state.get(key) not in options:
        st.session_state[key] = "__base__"
    picked = st.selectbox(label, options, key=key,
                          format_func=lambda o: state.base_choice().label if o == "__base__" else f"run: {o}",
                          help="A finished training run is explained with the base model as its reference")
    return state.base_choice() if picked == "__base__" else state.run_choice(picked)


def method_picker(key: str, *, reference: bool, default: str = "tidpo") -> str:
    """One attribution method; implicit_reward only when there is a reference model."""
    from tiviz.attribution.methods import METHODS

    options = [m for m in METHOD_ORDER if m in METHODS and (reference or not METHODS[m].needs_reference)]
    kept(key)
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    return st.selectbox("Method", options, key=key, help=METHODS[st.session_state[key]].description)


def methods_multiselect(key: str, *, reference: bool, default: Sequence[str]) -> list[str]:
    from tiviz.attribution.methods import METHODS

    options = [m for m in METHOD_ORDER if m in METHODS and (reference or not METHODS[m].needs_reference)]
    kept(key)
    if key not in st.session_state:
        st.session_state[key] = [m for m in default if m in options]
    else:
        st.session_state[key] = [m for m in st.session_state[key] if m in options]
    return list(st.multiselect("Methods", options, key=key))


# ---------------------------------------------------------------------------------------------- long work


@contextmanager
def progress(label: str) -> Iterator[state.Progress]:
    """A progress bar for long work, removed when it ends."""
    bar = st.progress(0.0, text=state.md_literal(label))

    def update(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=state.md_literal(f"{label}: {message}"))

    try:
        yield update
    finally:
        bar.empty()


def attribution(choice: state.ModelChoice, dataset: state.Dataset, pair_ids: Sequence[str],
                methods: Sequence[str], settings: dict[str, Any] | None = None, label: str = "Attributing") -> pd.DataFrame:
    """The attribution table, instantly when cached, else computed under a progress bar; errors shown, page
    stopped."""
    hit = state.cached_attribution(choice, dataset, pair_ids, methods, settings)
    if hit is not None:
        return hit
    try:
        with progress(label) as update:
            return state.attribution(choice, dataset, pair_ids, methods, settings, progress=update)
    except TivizError as err:
        st.error(state.describe_error(err))
        st.stop()
        raise  # unreachable: st.stop raises


def scores(choice: state.ModelChoice, dataset: state.Dataset, pair_ids: Sequence[str]) -> pd.DataFrame:
    with progress("Scoring") as update:
        return state.preference_scores(choice, dataset, pair_ids, progress=update)


# ---------------------------------------------------------------------------------------------- views


def show_prompt(pair: PreferencePair) -> None:
    st.html(viz.plain_text_html(pair.prompt_text(), title="Prompt"))


def show_pair(df: pd.DataFrame, pair_id: str, method: str, value: str = "score", *,
              scale: viz.Scale | None = None, vmax: float | None = None, caption: str = "") -> None:
    """Chosen and rejected side by side, shaded on one shared colour scale, with its legend."""
    rows = df[(df["pair_id"] == pair_id) & (df["method"] == method)]
    if vmax is None:
        vmax = viz.shading_range(rows, value)  # type: ignore[arg-type]
    if scale is None:
        scale = "diverging" if value == "score" and viz.is_signed(method, rows["score"]) else "sequential"
    left, right = st.columns(2)
    for col, side in ((left, "chosen"), (right, "rejected")):
        with col:
            side_rows = rows[rows["side"] == side]
            st.html(viz.shaded_tokens_html(side_rows, value=value, scale=scale, vmax=vmax,  # type: ignore[arg-type]
                                           title=f"{side.capitalize()} response · {method}{caption}"))
    values = rows[rows["in_response"]][value].abs()
    st.html(viz.legend_html(0.0, vmax, scale=scale, label=f"{method} {value}", clipped=bool((values > vmax * 1.000001).any())))


def show_scores(row: pd.Series, *, reference: bool) -> None:
    """The preference scores of a pair: log-probs, their margin, and implicit rewards with a reference."""
    c = st.columns(3)
    c[0].metric("log π(chosen | x)", f"{row['logp_chosen']:.2f}")
    c[1].metric("log π(rejected | x)", f"{row['logp_rejected']:.2f}")
    c[2].metric("log-prob margin", f"{row['logp_margin']:+.2f}",
                help="log π(chosen|x) − log π(rejected|x): > 0 means the model prefers the chosen response")
    if reference:
        c = st.columns(3)
        c[0].metric("implicit reward (chosen)", f"{row['reward_chosen']:+.3f}")
        c[1].metric("implicit reward (rejected)", f"{row['reward_rejected']:+.3f}")
        c[2].metric("reward margin", f"{row['reward_margin']:+.3f}",
                    help="β (log π − log π_ref), chosen minus rejected, with the base model as π_ref")
    else:
        st.caption("Implicit rewards need a reference: pick a finished training run as the model, and the base "
                   "model becomes its reference.")


def show_top_k(df: pd.DataFrame, key: str, default_k: int = 10) -> None:
    """A sortable table of the most important response tokens of each side (click a header to sort)."""
    k = st.slider("Top-k tokens", 3, 30, default_k, key=kept(f"{key}_k"))
    top = viz.top_tokens(df, k=k)
    drop = ["pair_id"] + (["method"] if top["method"].nunique() == 1 else [])
    st.dataframe(top.drop(columns=drop), hide_index=True, key=f"{key}_table",
                 column_config={"score": st.column_config.NumberColumn(format="%.4g"),
                                "weight": st.column_config.NumberColumn(format="%.4f")})


def base_model() -> state.ModelChoice:
    return state.base_choice()


def show_agreement(table: pd.DataFrame, methods: Sequence[str]) -> None:
    """Spearman rank correlation between the methods' token weights (response tokens, mean over sides)."""
    from tiviz.compare import agreement_matrix, method_agreement

    if len(methods) < 2:
        st.info("Pick two or more methods to see how far they agree.")
        return
    per_seq = method_agreement(table, list(methods))
    matrix = agreement_matrix(per_seq, "spearman", list(methods))
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(viz.rank_correlation_figure(matrix), key="agreement_heatmap")
    with right:
        st.caption("1: the methods rank the response tokens identically; 0: unrelated; −1: reversed. "
                   "Ranks by weight (|score|), averaged over the chosen and the rejected response.")
        st.dataframe(per_seq.drop(columns=["pair_id"]), hide_index=True, key="agreement_table",
                     column_config={"spearman": st.column_config.NumberColumn(format="%.3f"),
                                    "kendall": st.column_config.NumberColumn(format="%.3f")})


def show_convergence(table: pd.DataFrame) -> None:
    """Integrated gradients' completeness check, shown rather than hidden."""
    conv = viz.convergence_summary(table)
    if conv.empty:
        return
    worst = float(conv["relative_delta"].max())
    cols = st.columns(len(conv))
    for col, row in zip(cols, conv.itertuples(), strict=True):
        col.metric(f"{row.side}: delta / |f(x) − f(baseline)|", f"{row.relative_delta:.2%}",
                   help=f"delta {row.delta:.4g}; f(x) − f(baseline) = {row.f_x_minus_f_baseline:.4g}; "
                        f"f(x) = {row.f_x:.4g}")
    if worst > 0.05:
        st.warning(f"The attributions miss {worst:.1%} of f(x) − f(baseline) on one side: raise the number of "
                   "IG steps for a faithful split.")
    else:
        st.caption("Completeness holds: the token scores add up to f(x) − f(baseline) within "
                   f"{worst:.2%}.")


def value_label(value: str) -> str:
    return viz.VALUE_LABELS.get(value, value)


def dataset_table(choice: state.ModelChoice, dataset: state.Dataset, pair_ids: Sequence[str],
                  methods: Sequence[str], *, key: str) -> pd.DataFrame:
    """A dataset-wide table: shown at once when cached, else computed when the user presses the button (it
    can take a while on the real model), stopping the page until then."""
    hit = state.cached_attribution(choice, dataset, pair_ids, methods)
    if hit is not None:
        return hit
    ask = st.empty()
    with ask.container():
        st.caption(f"{len(pair_ids)} pairs × {len(methods)} methods are not computed yet.")
        clicked = st.button(f"Attribute {len(pair_ids)} pairs", key=key, type="primary")
    if not clicked:
        st.stop()
    ask.empty()
    return attribution(choice, dataset, pair_ids, methods, label=f"Attributing {len(pair_ids)} pairs")


def show_distributions(table: pd.DataFrame, kind: str, value: str, bins: int) -> None:
    st.plotly_chart(viz.distribution_figure(table, kind, value), key="dist_figure")  # type: ignore[arg-type]
    st.subheader("How concentrated are the weights?")
    summary = viz.concentration(table)
    st.plotly_chart(viz.concentration_figure(summary), key="dist_concentration")
    with st.expander("Means per method and side", expanded=True):
        means = summary.groupby(["method", "side"])[["entropy", "top10_share"]].mean().reset_index()
        st.dataframe(means, hide_index=True, key="dist_concentration_table",
                     column_config={"entropy": st.column_config.NumberColumn("entropy (1 = uniform)", format="%.3f"),
                                    "top10_share": st.column_config.NumberColumn("top-10 % share", format="%.3f")})
    st.subheader("Where in the response is the weight?")
    st.plotly_chart(viz.position_profile_figure(table, bins), key="dist_profile")
    st.caption("Mean weight × response length by relative position: 1 is uniform. TI-DPO's Gaussian prior "
               "lifts the middle of the response; raw gradients and attention tend to favour the ends.")


# ---------------------------------------------------------------------------------------------- training


def trainer_ready() -> bool:
    """Whether training is available in this build; says so on the page when it is not."""
    if jobs.trainer_available():
        return True
    st.warning("Training is not available yet: this build has no `tiviz.training.trainer` / `tiviz train` "
               "command. The other pages work without it.")
    return False


def train_form(dataset: state.Dataset) -> None:
    """Preset plus the main knobs; Start launches `tiviz train` as a separate process."""
    from tiviz.training.config import PRESET_HELP, config_from_preset, list_presets

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
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        overrides = {"batch_size": int(batch_size), "learning_rate": float(lr), "beta": float(beta),
                     "lam": float(lam), "gamma": float(gamma), "max_length": int(max_length),
                     "max_prompt_length": int(max_length) // 2, "logging_steps": 1}
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


def _job_view(job: jobs.Job) -> None:
    """Progress, the loss / reward-margin / accuracy charts, Cancel while it runs, the outcome after."""
    status = job.status()
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
            how = job.request_cancel()
            st.info("Asked the trainer to stop: it saves a checkpoint after this step and exits."
                    if how == "request" else "Training process terminated.")
    elif status.get("state") == "finished" and status.get("returncode") == 0:
        st.success(f"{state.md_literal(job.name)} finished: compare it on the Before / after page.")
    else:
        st.warning(state.md_literal(f"{job.name} ended ({status.get('state')}, exit code {status.get('returncode')})."))
    with st.expander("Trainer log"):
        st.code(job.log_tail() or "(empty)", language=None)


def runs_table() -> None:
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
        st.session_state["_after_run"] = picked
        st.switch_page("app_pages/before_after.py")
    st.caption("A finished run can also be picked as the model on Inspect (the base model is then its reference).")


# ---------------------------------------------------------------------------------------------- before / after


def run_picker(key: str) -> state.ModelChoice:
    """A finished run as the "after" model; stops the page with a hint when there is none."""
    runs = [r.name for r in finished_runs()]
    if not runs:
        st.info("No finished training run yet: start one on the Train page (a few steps are enough to see "
                "changes), then come back.")
        st.stop()
    kept(key)
    wanted = st.session_state.pop("_after_run", None)  # picked on the Train page
    if wanted in runs:
        st.session_state[key] = wanted
    if st.session_state.get(key) not in runs:
        st.session_state[key] = runs[0]
    name = st.selectbox("After: training run", runs, key=key,
                        help="Its base model is the reference π_ref of the implicit rewards")
    return state.run_choice(name)


def base_picker(key: str, run: state.ModelChoice) -> state.ModelChoice:
    """The "before" model: the run's own base model (from its config.json) by default, or the app's model."""
    options = list(dict.fromkeys([run.base, state.base_model_id()]))
    kept(key)
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    mid = st.selectbox("Before: base model", options, key=key,
                       format_func=lambda o: f"{o} (the run's starting model)" if o == run.base else o,
                       help="The weights before training. The run's starting model is also the reference π_ref "
                            "of the per-token implicit rewards, whichever model is picked here.")
    return state.base_choice(mid)


def show_before_after_pair(run: state.ModelChoice, base: state.ModelChoice, dataset: state.Dataset, pair_id: str,
                           method: str, value: str) -> None:
    before = attribution(base, dataset, [pair_id], [method], label="Before")
    after = attribution(run, dataset, [pair_id], [method], label="After")
    reward = attribution(run, dataset, [pair_id], ["implicit_reward"], label="Implicit reward")
    both = pd.concat([before, after])
    vmax = viz.shading_range(both[both["pair_id"] == pair_id], value)  # type: ignore[arg-type]
    st.markdown(f"**Before** ({state.md_literal(base.base)})")
    show_pair(before, pair_id, method, value, vmax=vmax, caption=" · before")
    st.markdown("**After** (trained run)")
    show_pair(after, pair_id, method, value, vmax=vmax, caption=" · after")
    st.markdown("**Change** (after − before; red: more weight after)")
    diff = viz.weight_difference(before, after, value)  # type: ignore[arg-type]
    show_pair(diff, pair_id, f"{method}_change", "score", scale="diverging", caption="")
    st.markdown(f"**Per-token implicit reward** β (log π − log π_ref), π_ref the run's base model {state.md_literal(run.base)}")
    st.caption("What training changed, token by token: red tokens became more likely under the run, blue less. "
               "Before training it is 0 for every token (the policy is its own reference).")
    show_pair(reward, pair_id, "implicit_reward", "score", scale="diverging")


def show_before_after_dataset(run: state.ModelChoice, base: state.ModelChoice, dataset: state.Dataset,
                              pair_ids: Sequence[str], method: str) -> None:
    cached = (state.cached_attribution(base, dataset, pair_ids, [method]) is not None
              and state.cached_attribution(run, dataset, pair_ids, [method]) is not None)
    if not cached and not st.button(f"Compare {len(pair_ids)} pairs", key="ba_run_dataset", type="primary"):
        st.caption("Attributes the pairs under both models and scores their preferences.")
        return
    before = attribution(base, dataset, pair_ids, [method], label="Before")
    after = attribution(run, dataset, pair_ids, [method], label="After")
    st.plotly_chart(viz.before_after_figure(before, after, labels=("before", "after")), key="ba_dist")
    sb = scores(base, dataset, pair_ids)
    sa = scores(run, dataset, pair_ids)
    merged = sb[["pair_id", "logp_margin"]].merge(sa[["pair_id", "logp_margin", "reward_margin"]], on="pair_id",
                                                  suffixes=("_before", "_after"))
    acc_b = float((merged["logp_margin_before"] > 0).mean())
    acc_a = float((merged["logp_margin_after"] > 0).mean())
    c = st.columns(3)
    c[0].metric("Preference accuracy (log-prob margin > 0)", f"{acc_a:.0%}", f"{acc_a - acc_b:+.0%} vs before")
    c[1].metric("Mean log-prob margin", f"{merged['logp_margin_after'].mean():+.2f}",
                f"{merged['logp_margin_after'].mean() - merged['logp_margin_before'].mean():+.2f} vs before")
    c[2].metric("Reward accuracy (implicit reward margin > 0)", f"{(merged['reward_margin'] > 0).mean():.0%}",
                help="β (log π − log π_ref) chosen minus rejected; before training it is 0 for every pair")
    fig = viz.margin_change_figure(merged.rename(columns={"logp_margin_before": "margin_before",
                                                          "logp_margin_after": "margin_after"}))
    st.plotly_chart(fig, key="ba_margins")


# ---------------------------------------------------------------------------------------------- export


@dataclass
class Selection:
    """What the Export page exports: the table and what made it."""

    table: pd.DataFrame
    pair_ids: list[str]
    methods: list[str]
    settings: dict[str, Any] | None


def export_selection(dataset: state.Dataset, pair: PreferencePair, what: str) -> Selection:
    """The table behind the current selection: this pair under the Methods page's methods, or the
    Distributions page's subset and methods (computed on demand, instantly when cached)."""
    if what == "pair":
        methods = st.session_state.get("_kept_methods_list") or ["tidpo", "gradient", "grad_x_input",
                                                                  "integrated_gradients", "attention"]
        steps = st.session_state.get("_kept_methods_ig_steps", 16)
        settings = {"n_steps": steps}
        st.caption(f"{len(methods)} methods ({', '.join(methods)}), as on the Methods page.")
        table = attribution(base_model(), dataset, [pair.id], methods, settings, label="Attributing the pair")
        return Selection(table, [pair.id], list(methods), settings)
    n = min(int(st.session_state.get("_kept_dist_n", 10)), len(dataset.pairs))
    methods = st.session_state.get("_kept_dist_methods") or ["tidpo", "gradient", "attention"]
    st.caption(f"The first {n} pairs under {', '.join(methods)}, as on the Distributions page.")
    ids = [p.id for p in dataset.subset(n)]
    return Selection(dataset_table(base_model(), dataset, ids, methods, key="export_run"), ids, list(methods), None)


def table_downloads(table: pd.DataFrame, stem: str) -> None:
    st.caption(f"{len(table):,} rows: one per (pair, side, token, method), with the provenance (model, methods, "
               "settings, data file and its SHA-256).")
    fmt = st.radio("Format", ["parquet", "csv", "json"], key=kept("export_format"), horizontal=True)
    mime = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "json": "application/json"}[fmt]
    st.download_button(f"Download {stem}.{fmt}", state.export_bytes(table, fmt), file_name=f"{stem}.{fmt}",
                       mime=mime, key="export_table")


def report_download(table: pd.DataFrame, dataset: state.Dataset, pair_ids: Sequence[str],
                    methods: Sequence[str], settings: dict[str, Any] | None) -> None:
    """The self-contained HTML report from `tiviz.report` for the selection, optionally against a run."""
    import importlib.util

    if importlib.util.find_spec("tiviz.report") is None:
        st.info("The HTML report is not available yet: this build has no `tiviz.report`. The table downloads "
                "above work.")
        return
    runs = ["(none)", *[r.name for r in finished_runs()]]
    after_name = st.selectbox("Compare with a training run", runs, key="export_after",
                              help="Adds before / after sections: the same pairs and methods under the run")
    if st.button("Build the report", key="export_report_build"):
        from tiviz.report import write_report

        after = None
        if after_name != "(none)":
            after = attribution(state.run_choice(after_name), dataset, pair_ids, methods, settings,
                                label=f"Attributing under {after_name}")
        with st.spinner("Writing the report…"):
            path = state.session_dir() / "tiviz-report.html"
            write_report(table, path, after=after, title=f"tiviz: {dataset.name}",
                         labels=("base", after_name) if after is not None else ("before", "after"))
            st.session_state["_report_html"] = path.read_bytes()
    if st.session_state.get("_report_html"):
        st.download_button("Download tiviz-report.html", st.session_state["_report_html"],
                           file_name="tiviz-report.html", mime="text/html", key="export_report")
