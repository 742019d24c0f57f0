"""What the user picks, shared by every page: the sidebar's dataset and pair, the model, the methods, the finished
runs and a run's base model, and the selections one page hands to another (documented keys below). Every widget
has an explicit key; dataset text reaches the page through widgets that show plain text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

from app import jobs, state
from tiviz.data import PreferencePair
from tiviz.errors import TivizError

PAGE = 1000  # pairs listed at once by the pair picker (more are reached by search or page)
METHOD_ORDER = ("tidpo", "gradient", "grad_x_input", "integrated_gradients", "attention", "occlusion", "token_score",
                "token_score_pair", "implicit_reward")
METHOD_LABELS = {"tidpo": "tidpo (TI-DPO's training weights)",
                 "token_score": "token_score (each token's own term of the score)",
                 "token_score_pair": "token_score_pair (own terms, shared text cancelled: splits the margin)"}


# ---------------------------------------------------------------------------------------------- kept widgets


def kept(key: str) -> str:
    """A widget key whose value survives visits to other pages (Streamlit drops the state of widgets a run
    does not draw): restores the value saved by `save_kept` and returns the key, for `key=kept("...")`."""
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


# ---------------------------------------------------------------------------------------------- sidebar


def sidebar() -> None:
    """Dataset (a sample or an upload) and pair, shared by every page; the model in use below them."""
    save_kept()
    if "dataset" not in st.session_state:
        _from_query_params()
    with st.sidebar:
        st.markdown("### Data")
        options = [*state.SAMPLES, state.UPLOAD, state.HF_DATASET]
        choice = st.selectbox("Dataset", options, key="dataset",
                              help="The bundled sample pairs, your own JSONL / JSON / CSV / Parquet file, or a "
                              "Hugging Face dataset (a save_to_disk folder or a hub id)")
        if choice == state.UPLOAD:
            _upload_widget()
        elif choice == state.HF_DATASET:
            _hf_widget()
        else:
            st.session_state["_dataset"] = state.load_sample(choice)
        dataset = current_dataset()
        if dataset is not None:
            pair_picker(dataset)
        st.divider()
        st.caption(f"Model: {state.md_literal(state.base_model_id())}  \n"
                   f"Runs folder: {state.md_literal(state.runs_dir().name + '/')}")


def pair_picker(dataset: state.Dataset) -> None:
    """The pair, shown by id and prompt. Up to `PAGE` pairs: one list. More: a search box (id or prompt text)
    and pages of `PAGE` pairs, so a sidebar draw sends at most `PAGE` labels to the browser."""
    if not dataset.has(st.session_state.get("pair")):
        st.session_state["pair"] = dataset.pairs[0].id
    n = len(dataset.pairs)
    help_text = f"{n:,} pairs in {state.md_literal(dataset.name)}"
    if n <= PAGE:
        options = dataset.ids
    else:
        query = st.text_input("Find a pair", key="pair_search", placeholder="part of an id or prompt",
                              help=f"Shows the first {PAGE:,} pairs whose id or prompt contains this text")
        if query.strip():
            options = dataset.find(query, limit=PAGE)
            if not options:
                st.caption("No pair matches.")
        else:
            pages = -(-n // PAGE)
            page = st.number_input(f"Page (of {pages:,})", 1, pages, 1, key="pair_page",
                                   help=f"{PAGE:,} pairs per page, in file order")
            start = (int(page) - 1) * PAGE
            options = [p.id for p in dataset.pairs[start : start + PAGE]]
        current = st.session_state["pair"]
        if current not in options:  # the pair on show stays pickable while another page is listed
            options = [current, *options]
    st.selectbox("Pair", options, key="pair", format_func=lambda i: _pair_label(dataset.pair(i)), help=help_text)


def _from_query_params() -> None:
    """A new session may open on a given sample and pair: `?dataset=test&pair=fact-001` (links, benchmarks)."""
    name = f"sample: {st.query_params.get('dataset', 'train')}"
    if name in state.SAMPLES:
        st.session_state["dataset"] = name
        pair = st.query_params.get("pair")
        if state.load_sample(name).has(pair):
            st.session_state["pair"] = pair


def _hf_widget() -> None:
    source = st.text_input("Folder or hub id", key="hf_source", placeholder="trl-lib/ultrafeedback_binarized",
                           help="a folder written by Dataset.save_to_disk / DatasetDict.save_to_disk, or a hub "
                           "dataset id owner/name[:config] (streamed)")
    split = st.text_input("Split", key="hf_split", help="the split of a DatasetDict or hub dataset")
    limit = st.number_input("Rows", 1, 10_000, 100, key="hf_limit", help="read only the first N rows")
    st.session_state.pop("_dataset", None)
    if not source.strip():
        return
    try:
        st.session_state["_dataset"] = state.load_hf_dataset(source.strip(), split.strip() or None, int(limit))
    except TivizError as err:
        st.error(state.describe_error(err))


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
    dataset = require_dataset()
    pid = st.session_state.get("pair")
    if not isinstance(pid, str) or not dataset.has(pid):
        pid = dataset.pairs[0].id
    return dataset, dataset.pair(pid)


def require_dataset() -> state.Dataset:
    """The dataset chosen in the sidebar; stops the page with a hint when there is none."""
    dataset = current_dataset()
    if dataset is None:
        st.info("Choose a dataset in the sidebar (or upload one) to start.")
        st.stop()
    return dataset


# ---------------------------------------------------------------------------------------------- models, methods


def model_picker(key: str, label: str = "Model", *, reward_models: bool = False) -> state.ModelChoice:
    """The scorer: the base model (its likelihood), a finished run (its implicit reward, the base model as the
    reference), or with `reward_models` a reward-model folder in the runs folder (its score)."""
    runs = [r.name for r in finished_runs()]
    rms = [f"rm:{n}" for n in state.reward_model_folders()] if reward_models else []
    options = ["__base__", *runs, *rms]
    kept(key)
    if st.session_state.get(key) not in options:
        st.session_state[key] = "__base__"

    def shown(o: str) -> str:
        if o == "__base__":
            return f"{state.base_choice().label} · likelihood"
        return f"reward model: {o[3:]}" if o.startswith("rm:") else f"run: {o} · implicit reward"

    picked = st.selectbox(label, options, key=key, format_func=shown,
                          help="What is explained: the base model's likelihood log π(y|x); a finished run's "
                               "implicit reward β (log π − log π_ref) with its base model as π_ref; or a reward "
                               "model's score (a *ForSequenceClassification folder in the runs folder)")
    if picked == "__base__":
        return state.base_choice()
    return state.reward_model_choice(picked[3:]) if picked.startswith("rm:") else state.run_choice(picked)


def method_options(reference: bool, reward_model: bool = False) -> list[str]:
    """The methods the scorer can give (`tiviz.attribution.methods.scorer_methods`), in display order:
    implicit_reward only with a reference model, none that reads LM logits for a reward model."""
    from tiviz.attribution.methods import scorer_methods

    kind = "reward_model" if reward_model else "implicit_reward" if reference else "likelihood"
    allowed = scorer_methods(kind)
    return [m for m in METHOD_ORDER if m in allowed] + [m for m in allowed if m not in METHOD_ORDER]


def method_picker(key: str, *, reference: bool, reward_model: bool = False, kind: str = "likelihood") -> str:
    """One attribution method; implicit_reward only when there is a reference model. It opens on the method the
    quality benchmark ranks best for the scorer's `kind` (`tiviz.evaluation.method_ranking.default_method`), follows
    the kind while the user keeps that default, and says why in a caption; any method can still be picked."""
    from tiviz.attribution.methods import METHODS
    from tiviz.evaluation.method_ranking import default_method

    options = method_options(reference, reward_model)
    default, reason = default_method(kind, options)
    kept(key)
    auto = f"_default_{key}"  # the default this widget last opened on: a value still equal to it follows the kind
    if st.session_state.get(key) not in options or st.session_state.get(key) == st.session_state.get(auto):
        st.session_state[key] = default
    st.session_state[auto] = default
    picked = st.selectbox("Method", options, key=key, format_func=lambda m: METHOD_LABELS.get(m, m),
                          help=METHODS[st.session_state[key]].description)
    lead = "Opened on" if picked == default else "Default"
    st.caption(state.md_literal(f"{lead} {default} for {kind.replace('_', ' ')} scorers: {reason}"))
    return str(picked)


def methods_multiselect(key: str, *, reference: bool, default: Sequence[str]) -> list[str]:
    """Several attribution methods, kept across pages."""
    options = method_options(reference)
    kept(key)
    if key not in st.session_state:
        st.session_state[key] = [m for m in default if m in options]
    else:
        st.session_state[key] = [m for m in st.session_state[key] if m in options]
    return list(st.multiselect("Methods", options, key=key, format_func=lambda m: METHOD_LABELS.get(m, m)))


# ---------------------------------------------------------------------------------------------- runs


@st.cache_resource(show_spinner=False)
def job_manager() -> jobs.JobManager:
    """The process-wide training jobs (one may run at a time; jobs a previous app left running are adopted)."""
    return jobs.JobManager(max_running=1, runs_dir=state.runs_dir())


def finished_runs() -> list[jobs.RunInfo]:
    """Finished runs in the runs folder, minus other sessions' jobs in progress."""
    return [r for r in _visible_runs() if r.finished]


def damaged_runs() -> list[jobs.RunInfo]:
    """Runs whose final model fails its checks (`RunInfo.problem` says why)."""
    return [r for r in _visible_runs() if r.state == "damaged"]


def _visible_runs() -> list[jobs.RunInfo]:
    return jobs.list_runs(state.runs_dir(), exclude=job_manager().running_elsewhere(state.session_id()))


def run_picker(key: str) -> state.ModelChoice:
    """A finished run as the "after" model; stops the page with a hint when there is none."""
    runs = [r.name for r in finished_runs()]
    if not runs:
        st.info("No finished training run yet: start one on the Train page (a few steps are enough to see "
                "changes), then come back.")
        st.stop()
    kept(key)
    wanted = st.session_state.pop(AFTER_RUN, None)
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


# ---------------------------------------------------------------------------------------------- shared selections
# What one page hands to another goes through these documented session keys, never through another page's
# widget keys.

AFTER_RUN = "shared_after_run"  # str: the run picked on the Train page for Before / after (read once)
PAIR_SELECTION = "shared_pair_selection"  # PairSelection: the Methods page's methods and IG steps
DATASET_SELECTION = "shared_dataset_selection"  # DatasetSelection: the Distributions page's subset and methods


@dataclass(frozen=True)
class PairSelection:
    """The methods (and integrated gradients' steps) the Methods page shows one pair under."""

    methods: tuple[str, ...] = ("tidpo", "gradient", "grad_x_input", "integrated_gradients", "attention")
    n_steps: int = 16


@dataclass(frozen=True)
class DatasetSelection:
    """The first `n` pairs and the methods the Distributions page shows."""

    n: int = 10
    methods: tuple[str, ...] = ("tidpo", "gradient", "attention")


def offer_pair_selection(methods: Sequence[str], n_steps: int) -> None:
    """Publish the Methods page's choice (the Export page exports it)."""
    st.session_state[PAIR_SELECTION] = PairSelection(tuple(methods), int(n_steps))


def offer_dataset_selection(n: int, methods: Sequence[str]) -> None:
    """Publish the Distributions page's choice (the Export page exports it)."""
    st.session_state[DATASET_SELECTION] = DatasetSelection(int(n), tuple(methods))


def pair_selection() -> PairSelection:
    """The Methods page's last choice, or its defaults; no methods picked means the defaults."""
    picked = st.session_state.get(PAIR_SELECTION) or PairSelection()
    return picked if picked.methods else PairSelection(n_steps=picked.n_steps)


def dataset_selection() -> DatasetSelection:
    """The Distributions page's last choice, or its defaults; no methods picked means the defaults."""
    picked = st.session_state.get(DATASET_SELECTION) or DatasetSelection()
    return picked if picked.methods else DatasetSelection(n=picked.n)
