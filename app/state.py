"""What the app knows and computes: the datasets, the models, cached attributions and scores, per-session
folders, and the guards on uploads and paths. No widgets here (those are in `app_pages/`).

Models are cached once per process with `st.cache_resource`, keyed by model id (or run folder and its time
stamp). Attribution tables are cached per (model, data, pair ids, method, settings) in one process-wide LRU
cache, so going back to a page, or asking for a method already computed on another page, is instant.
Everything a session owns (its uploads, its training job) lives in `st.session_state` or in its own temporary
folder, so two sessions never see each other's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from tiviz.config import result_settings
from tiviz.data import SUFFIXES, PreferencePair, ReadBudget, load_pairs
from tiviz.errors import ConfigError, DataError
from tiviz.files import file_sha256
from tiviz.models import DEFAULT_MODEL, LoadedModel
from tiviz.safe_html import escape_markdown as md_literal  # the one Markdown escape
from tiviz.table import PROVENANCE_KEY

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "sample_data"
SAMPLES: dict[str, str] = {
    "sample: train": "train.jsonl",
    "sample: test": "test.jsonl",
    "sample: conversational": "conversational.jsonl",
}
UPLOAD = "upload a file…"
HF_DATASET = "Hugging Face dataset…"
UPLOAD_TYPES = [s.lstrip(".") for s in SUFFIXES]
RESULT_CACHE_ENTRIES = 256
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # the whole name (fullmatch: "x\n" is refused)


# ---------------------------------------------------------------------------------------------- settings


def base_model_id() -> str:
    """The model the app inspects: $TIVIZ_APP_MODEL, default the offline SmolLM2-135M-Instruct."""
    return os.environ.get("TIVIZ_APP_MODEL", "").strip() or DEFAULT_MODEL


def runs_dir() -> Path:
    """Where training runs live: $TIVIZ_RUNS_DIR, default `runs/` in the repository."""
    env = os.environ.get("TIVIZ_RUNS_DIR", "").strip()
    return (Path(env).expanduser() if env else REPO_ROOT / "runs").resolve()


def max_upload_bytes() -> int:
    """Largest upload accepted: $TIVIZ_APP_MAX_UPLOAD_MB megabytes (default 20)."""
    try:
        mb = float(os.environ.get("TIVIZ_APP_MAX_UPLOAD_MB", "20"))
    except ValueError:
        mb = 20.0
    return int(mb * 1024 * 1024)


def upload_budget() -> ReadBudget:
    """What an upload may decode to: $TIVIZ_APP_MAX_PAIRS pairs (default 100,000) and $TIVIZ_APP_MAX_TEXT_MB
    million characters of text (default 64, about three times what a 20 MB JSONL file holds): a few-KB Parquet
    file can hold hundreds of MB of repeated text, and the server would build it all."""
    def number(env: str, default: float) -> float:
        try:
            return float(os.environ.get(env, "") or default)
        except ValueError:
            return default

    return ReadBudget(max_rows=int(number("TIVIZ_APP_MAX_PAIRS", 100_000)),
                      max_chars=int(number("TIVIZ_APP_MAX_TEXT_MB", 64) * 2**20),
                      fix="upload a smaller file (or raise TIVIZ_APP_MAX_PAIRS / TIVIZ_APP_MAX_TEXT_MB)")


def inside(root: Path, name: str, *, what: str = "name") -> Path:
    """`root / name`, refusing any name that could leave `root` (separators, `..`, absolute paths, links out).

    Raises:
        ConfigError: naming the field and what is allowed.
    """
    allowed = f"a plain name (letters, digits, '.', '_', '-') inside {root}"
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(what, name, allowed)
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ConfigError(what, name, allowed)
    return path


# ---------------------------------------------------------------------------------------------- session


def session_id() -> str:
    """A random id for this browser session (owner of its uploads and its training job)."""
    if "_tiviz_session" not in st.session_state:
        st.session_state["_tiviz_session"] = os.urandom(8).hex()
    return str(st.session_state["_tiviz_session"])


class SessionFolder:
    """Owns a session's temporary folder and deletes it when the session's state is dropped (session end)."""

    def __init__(self, path: str) -> None:
        self.path = path
        weakref.finalize(self, shutil.rmtree, path, True)


def session_dir() -> Path:
    """This session's own temporary folder: uploads and exports are written here and nowhere else; it goes
    away with the session."""
    folder = st.session_state.get("_tiviz_tmp")
    if not folder or not Path(folder).is_dir():
        folder = tempfile.mkdtemp(prefix=f"tiviz-app-{session_id()}-")
        st.session_state["_tiviz_tmp"] = folder
        st.session_state["_tiviz_tmp_owner"] = SessionFolder(folder)
    return Path(folder)


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    """A validated set of pairs, with a content key for caches and the file it came from."""

    name: str  # shown to the user
    key: str  # sha256 of the file's bytes
    path: str  # the file on disk (a sample, or the session's copy of an upload)
    pairs: tuple[PreferencePair, ...]

    @property
    def ids(self) -> list[str]:
        return list(self._index)

    @cached_property
    def _index(self) -> dict[str, int]:
        """pair id -> its position, built once (ids are unique: `load_pairs` refuses duplicates)."""
        return {p.id: i for i, p in enumerate(self.pairs)}

    @cached_property
    def _search_text(self) -> list[str]:
        """Per pair, the lower-cased id and prompt that `find` searches, built on the first search."""
        return [f"{p.id}\n{p.prompt_text()}".lower() for p in self.pairs]

    def has(self, pair_id: object) -> bool:
        return isinstance(pair_id, str) and pair_id in self._index

    def pair(self, pair_id: str) -> PreferencePair:
        """The pair with this id, found through the index (a scan per lookup made the picker quadratic)."""
        return self.pairs[self._index[pair_id]]

    def find(self, query: str, limit: int = 1000) -> list[str]:
        """Ids of the first `limit` pairs whose id or prompt contains `query` (case-insensitive), in file order;
        every pair's when `query` is blank."""
        q = query.strip().lower()
        if not q:
            return [p.id for p in self.pairs[:limit]]
        hits = (i for i, text in enumerate(self._search_text) if q in text)
        return [self.pairs[i].id for _, i in zip(range(limit), hits, strict=False)]

    def subset(self, n: int) -> list[PreferencePair]:
        """The first n pairs (in file order): the same subset on every page and in every session."""
        return list(self.pairs[: max(1, int(n))])


@st.cache_resource(show_spinner=False)
def load_sample(name: str) -> Dataset:
    """One of the bundled sample datasets, by its menu name."""
    if name not in SAMPLES:
        raise ConfigError("dataset", name, ", ".join(SAMPLES))
    path = DATA_DIR / SAMPLES[name]
    return Dataset(name=name, key=file_sha256(path), path=str(path), pairs=tuple(load_pairs(path)))


@st.cache_resource(show_spinner=False, max_entries=8)
def load_hf_dataset(source: str, split: str | None, limit: int) -> Dataset:
    """A `datasets` source (a `save_to_disk` folder, or a hub id `owner/name[:config]`, streamed), its first
    `limit` rows, through `tiviz.data.load_pairs` (validation and errors as for files; `tiviz.hf_data`)."""
    pairs = load_pairs(source, split=split or None, limit=limit)
    spec = f"{source}|{split}|{limit}"
    key = hashlib.sha256(("\n".join(json.dumps(p.to_record(), sort_keys=True, default=str) for p in pairs)
                          ).encode()).hexdigest()
    return Dataset(name=f"{source} [{split}]" if split else source, key=key, path=spec, pairs=tuple(pairs))


def load_upload(filename: str, data: bytes, folder: Path) -> Dataset:
    """Validate an uploaded file and load its pairs. The bytes are written only into `folder` (the session's own
    temporary folder), under a sanitised name; they are parsed as data, never executed.

    Raises:
        DataError: naming the uploaded file (not the temporary copy), the line, the field and the fix.
    """
    shown = Path(str(filename)).name or "upload"
    suffix = Path(shown).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"unsupported file type {suffix or '(none)'!r}", source=shown,
                        fix=f"upload one of {', '.join(SUFFIXES)}")
    limit = max_upload_bytes()
    if len(data) > limit:
        raise DataError(f"file is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit", source=shown,
                        fix="upload a smaller file (or raise TIVIZ_APP_MAX_UPLOAD_MB)")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(shown).stem).strip("_")[:60] or "upload"
    key = hashlib.sha256(data).hexdigest()
    target = inside(folder, f"{stem}-{key[:8]}{suffix}", what="upload")
    target.write_bytes(data)
    try:
        pairs = load_pairs(target, budget=upload_budget())
    except DataError as err:
        raise DataError(err.reason, source=shown, line=err.line, field=err.field, fix=err.fix,
                        unit=err.unit) from None
    return Dataset(name=shown, key=key, path=str(target), pairs=tuple(pairs))


def describe_error(err: Exception) -> str:
    """A tiviz error as a few readable lines (file, line, field, fix), escaped for Streamlit's markdown."""
    if isinstance(err, DataError):
        lines = [f"**Could not load {md_literal(err.source or 'the data')}**: {md_literal(err.reason)}"]
        if err.line is not None:
            lines.append(f"- line: {err.line}")
        if err.field is not None:
            lines.append(f"- field: {md_literal(err.field)}")
        if err.fix:
            lines.append(f"- fix: {md_literal(err.fix)}")
        return "\n".join(lines)
    return md_literal(str(err))


# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelChoice:
    """Which scorer a page explains (`tiviz.scoring`): a base model (its likelihood), a finished run (its implicit
    reward, with its base model as the reference), or a reward-model folder (its score)."""

    label: str
    key: str  # cache key: the model id, or the run's folder and modification time
    base: str  # the base model id: the model itself, or the one the run started from (its reference)
    run: str | None = None  # run name inside runs_dir()
    reward_model: str | None = None  # reward-model folder name inside runs_dir()

    @property
    def has_reference(self) -> bool:
        return self.run is not None

    @property
    def kind(self) -> str:
        """The scorer kind: likelihood, implicit_reward or reward_model."""
        return "reward_model" if self.reward_model else "implicit_reward" if self.run else "likelihood"


def base_choice(model_id: str | None = None) -> ModelChoice:
    """A base model by id (default: the app's model, `base_model_id()`)."""
    mid = model_id or base_model_id()
    return ModelChoice(label=f"base: {mid}", key=f"base:{mid}", base=mid)


def run_base_model(name: str) -> str:
    """The model a run started from (its `config.json`), or the app's model when the run does not say."""
    from tiviz.training.runfolder import read_run_config

    try:
        recorded = read_run_config(inside(runs_dir(), name, what="run")).get("model")
    except Exception:  # an unreadable config must not break the page: fall back to the app's model
        recorded = None
    return recorded if isinstance(recorded, str) and recorded.strip() else base_model_id()


def run_choice(name: str) -> ModelChoice:
    """A finished run as the policy; its key changes if the run's final weights are rewritten."""
    final = run_weights(name)
    stamp = max((f.stat().st_mtime_ns for f in final.glob("*") if f.is_file()), default=0)
    return ModelChoice(label=f"run: {name}", key=f"run:{final}:{stamp}", run=name, base=run_base_model(name))


def reward_model_folders() -> list[str]:
    """The reward-model folders in the runs folder (config.json architectures *ForSequenceClassification)."""
    from tiviz.models import is_reward_model_folder

    root = runs_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and SAFE_NAME.match(p.name)
                  and is_reward_model_folder(p))


def reward_model_choice(name: str) -> ModelChoice:
    """A reward-model folder in the runs folder as the scorer; its key changes if its weights are rewritten."""
    folder = inside(runs_dir(), name, what="reward model")
    stamp = max((f.stat().st_mtime_ns for f in folder.glob("*") if f.is_file()), default=0)
    return ModelChoice(label=f"reward model: {name}", key=f"rm:{folder}:{stamp}", base=str(folder),
                       reward_model=name)


@st.cache_resource(show_spinner="Loading the reward model (once per server)…", max_entries=2)
def load_reward_folder(key: str, folder: str) -> LoadedModel:
    """A reward-model folder (safetensors), cached by `key` (folder + time stamp)."""
    from tiviz.models import load_reward_model

    return load_reward_model(folder)


@st.cache_resource(show_spinner="Loading the model (once per server)…", max_entries=2)
def load_base_model(model_id: str) -> LoadedModel:
    """The base model by id (anything `tiviz.models.load_model` takes), loaded once per process."""
    from tiviz.models import load_model

    return load_model(model_id)


@st.cache_resource(show_spinner="Loading the trained model (once per server)…", max_entries=3)
def load_run_model(key: str, final_dir: str) -> LoadedModel:
    """A finished run's `final/` weights (safetensors), cached by `key` (folder + time stamp)."""
    from tiviz.models import load_model

    return load_model(final_dir)


def get_model(choice: ModelChoice) -> LoadedModel:
    if choice.reward_model is not None:
        return load_reward_folder(choice.key, str(inside(runs_dir(), choice.reward_model, what="reward model")))
    if choice.run is None:
        return load_base_model(choice.base)
    return load_run_model(choice.key, str(run_weights(choice.run)))


def run_weights(name: str) -> Path:
    """The weights of a run in the runs folder: tiviz's `final/`, or a TRL output, checkpoint or merged LoRA
    (`tiviz.integrations.checkpoints.weights_folder`); `final/` when it has none yet."""
    from tiviz.integrations.checkpoints import weights_folder

    run = inside(runs_dir(), name, what="run")
    return weights_folder(run) or run / "final"


def reference_for(choice: ModelChoice) -> Any | None:
    """The reference pi_ref for a choice: the run's base model for a run, none for a base model itself."""
    return load_base_model(choice.base).model if choice.has_reference else None


def scorer_for(choice: ModelChoice, beta: float = 0.1) -> Any:
    """The choice's `tiviz.scoring.Scorer`: likelihood, implicit reward against the run's base, or reward model."""
    from tiviz.scoring import make_scorer

    return make_scorer(get_model(choice), reference=reference_for(choice), beta=beta)


# Long attribution runs hold the compute lock for TURN_PAIRS pairs at a time and then step aside, so that another
# session's single pair waits for one turn, not for a whole 500-pair request.
TURN_PAIRS = 8
TURN_PAUSE_S = 0.005


@st.cache_resource(show_spinner=False)
def compute_lock() -> threading.RLock:
    """One lock around model computations: sessions share the cached models, and attribution toggles their
    parameters' requires_grad, so two sessions must not run through a model at the same time."""
    return threading.RLock()


# ---------------------------------------------------------------------------------------------- results


class ResultCache:
    """A process-wide LRU of computed tables, keyed by everything that made them."""

    def __init__(self, max_entries: int = RESULT_CACHE_ENTRIES) -> None:
        self._items: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key: tuple) -> pd.DataFrame | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple, value: pd.DataFrame) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@st.cache_resource(show_spinner=False)
def result_cache() -> ResultCache:
    return ResultCache()


Progress = Callable[[float, str], None]


def attribution_key(choice: ModelChoice, dataset: Dataset, pair_ids: Sequence[str], method: str,
                    settings: dict[str, Any] | None) -> tuple:
    """Everything that makes a method's table; only the settings it depends on count
    (`tiviz.config.result_settings`), so the Methods page reuses what Inspect computed."""
    relevant = result_settings(method, settings or {})
    return ("attr", choice.key, dataset.key, tuple(pair_ids), method, json.dumps(relevant, sort_keys=True))


def cached_attribution(choice: ModelChoice, dataset: Dataset, pair_ids: Sequence[str], methods: Sequence[str],
                       settings: dict[str, Any] | None = None) -> pd.DataFrame | None:
    """The table if every method is already cached, else None (nothing is computed)."""
    cache = result_cache()
    parts = [cache.get(attribution_key(choice, dataset, pair_ids, m, settings)) for m in methods]
    if any(p is None for p in parts):
        return None
    return for_reader(combine_tables(parts), dataset, pair_ids)


def attribution(choice: ModelChoice, dataset: Dataset, pair_ids: Sequence[str], methods: Sequence[str],
                settings: dict[str, Any] | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """The tidy table of `pair_ids` under `methods`, computing (one method at a time, with progress) only what
    the cache does not hold.

    Args:
        settings: AttributionConfig overrides (e.g. n_steps); part of the cache key.
        progress: called as progress(fraction done, message).
    """
    cache = result_cache()
    pairs = [dataset.pair(i) for i in pair_ids]
    missing = [m for m in methods if cache.get(attribution_key(choice, dataset, pair_ids, m, settings)) is None]
    if missing:
        from tiviz.attribution import attribute

        loaded = get_model(choice)
        ref = reference_for(choice)
        for k, m in enumerate(missing):
            def report(done: int, total: int, k: int = k, m: str = m) -> None:
                if progress is not None:
                    progress((k + done / max(total, 1)) / len(missing),
                             f"{m}: {done}/{total} pairs (method {k + 1} of {len(missing)})")

            if progress is not None:
                progress(k / len(missing), f"{m}: 0/{len(pairs)} pairs (method {k + 1} of {len(missing)})")
            target = {"target": "reward"} if choice.kind == "reward_model" else {}  # its score: no logits
            turns = []
            for start in range(0, len(pairs), TURN_PAIRS):
                with compute_lock():
                    turns.append(attribute(
                        loaded, pairs[start : start + TURN_PAIRS], [m], ref_model=ref, model_id=loaded.model_id,
                        progress=lambda done, _total, start=start, report=report: report(start + done, len(pairs)),
                        data_info=data_info(dataset, pair_ids), **{**target, **(settings or {})}))
                time.sleep(TURN_PAUSE_S)  # the lock is free now: let a waiting session take it
            df = pd.concat(turns, ignore_index=True) if len(turns) > 1 else turns[0]
            df.attrs = turns[0].attrs
            cache.put(attribution_key(choice, dataset, pair_ids, m, settings), df)
    parts = [cache.get(attribution_key(choice, dataset, pair_ids, m, settings)) for m in methods]
    return for_reader(combine_tables([p for p in parts if p is not None]), dataset, pair_ids)


def data_info(dataset: Dataset, pair_ids: Sequence[str]) -> dict[str, Any]:
    """The provenance of the data a session attributes: its own file name, the content hash, the pair count."""
    return {"file": dataset.name, "sha256": dataset.key, "n_pairs": len(pair_ids)}


def for_reader(df: pd.DataFrame, dataset: Dataset, pair_ids: Sequence[str]) -> pd.DataFrame:
    """A cached table as this session reads it: the rows shared (never copied), the provenance its own copy
    naming this session's file. The cache is keyed by content, so the table may have been computed for another
    session's upload of the same bytes under another name."""
    out = df.copy(deep=False)
    prov = json.loads(json.dumps(df.attrs.get(PROVENANCE_KEY, {}), default=str))
    prov["data"] = data_info(dataset, pair_ids)
    out.attrs = {**{k: v for k, v in df.attrs.items() if k != PROVENANCE_KEY}, PROVENANCE_KEY: prov}
    return out


def combine_tables(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Tables of the same pairs under different methods into one; the provenance lists every method."""
    if len(parts) == 1:
        return parts[0]
    out = pd.concat(parts, ignore_index=True)
    prov = dict(parts[0].attrs.get("tiviz", {}))
    prov["methods"] = [m for p in parts for m in p.attrs.get("tiviz", {}).get("methods", [])]
    prov["method_targets"] = {k: v for p in parts for k, v in p.attrs.get("tiviz", {}).get("method_targets", {}).items()}
    out.attrs["tiviz"] = prov
    return out


def preference_scores(choice: ModelChoice, dataset: Dataset, pair_ids: Sequence[str], *, beta: float = 0.1,
                      progress: Progress | None = None) -> pd.DataFrame:
    """Per pair: the response log-probs log pi(y|x) of both sides and their margin; with a reference (a run as
    the policy), also the implicit rewards beta (log pi - log pi_ref) and their margin (NaN otherwise). Scored by
    `tiviz.scoring.score_pairs`, with the attribution's default max_length so scores and tables see one text.

    Returns:
        pair_id, logp_chosen, logp_rejected, logp_margin, reward_chosen, reward_rejected, reward_margin.
    """
    from tiviz.config import AttributionConfig
    from tiviz.scoring import make_scorer, score_pairs

    key = ("scores", choice.key, dataset.key, tuple(pair_ids), beta)
    cache = result_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit
    policy = get_model(choice)
    ref = reference_for(choice)
    pairs = [dataset.pair(pid) for pid in pair_ids]
    scorers = [make_scorer(policy)] + ([make_scorer(policy, reference=ref, beta=beta)] if ref is not None else [])
    tables = []
    for k, scorer in enumerate(scorers):
        def report(done: int, total: int, k: int = k) -> None:
            if progress is not None:
                progress((k + done / max(total, 1)) / len(scorers), f"scoring {done}/{total} pairs")

        with compute_lock():
            tables.append(score_pairs(scorer, pairs, max_length=AttributionConfig().max_length, progress=report))
    lp = tables[0]
    nan = pd.Series(math.nan, index=lp.index)
    rw = tables[1] if len(tables) > 1 else pd.DataFrame({"chosen": nan, "rejected": nan, "margin": nan})
    out = pd.DataFrame({"pair_id": lp["pair_id"].astype(str), "logp_chosen": lp["chosen"],
                        "logp_rejected": lp["rejected"], "logp_margin": lp["margin"], "reward_chosen": rw["chosen"],
                        "reward_rejected": rw["rejected"], "reward_margin": rw["margin"]})
    cache.put(key, out)
    return out


def scorer_scores(choice: ModelChoice, dataset: Dataset, pair_ids: Sequence[str], *, beta: float = 0.1,
                  progress: Progress | None = None) -> pd.DataFrame:
    """Per pair the choice's own scorer's score of both sides and its margin (`tiviz.scoring.score_pairs`):
    pair_id, chosen, rejected, margin; `attrs["tiviz"]` names the scorer and its quantity."""
    from tiviz.config import AttributionConfig
    from tiviz.scoring import score_pairs

    key = ("scorer", choice.key, dataset.key, tuple(pair_ids), beta)
    cache = result_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(done / max(total, 1), f"scoring {done}/{total} pairs")

    with compute_lock():
        out = score_pairs(scorer_for(choice, beta), [dataset.pair(i) for i in pair_ids],
                          max_length=AttributionConfig().max_length, progress=report)
    cache.put(key, out)
    return out


def run_weight_source(name: str) -> Any:
    """A run's token-weight source (`tiviz.training.used_weights.WeightSource`).

    Raises:
        TivizError: the run has no TI-DPO settings in its config.json (tiviz did not train it).
    """
    from tiviz.training.used_weights import weight_source

    return weight_source(inside(runs_dir(), name, what="run"))


def training_weights(run: ModelChoice, dataset: Dataset, pair_id: str, when: str) -> pd.DataFrame:
    """The token weights w_t the run's training gave `pair_id` at its start or its end
    (`tiviz.training.used_weights.training_weights`, with the app's cached base and final models). When `dataset`
    is the run's training file (same sha256), the pair keeps its training position (which seeds `random`);
    otherwise it is weighed alone. Cached like the attribution tables.

    Raises:
        TivizError: not a tiviz run, or a pair the run's stored fixed weights do not hold.
    """
    from tiviz.training.used_weights import training_weights as compute

    assert run.run is not None, "training_weights: a run, not a base model"
    key = ("training_weights", run.key, dataset.key, pair_id, when)
    cache = result_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit
    in_training = run_weight_source(run.run).data_sha256 == dataset.key
    pairs = dataset.pairs if in_training else (dataset.pair(pair_id),)
    base = load_base_model(run.base)
    final = get_model(run) if when == "end" else None
    with compute_lock():
        out = compute(inside(runs_dir(), run.run, what="run"), pairs, when=when, pair_ids=[pair_id],  # type: ignore[arg-type]
                      base=base, final=final)
    cache.put(key, out)
    return out


def export_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    """The table as Parquet, CSV or JSON bytes, written through this session's own folder."""
    return table_bytes(df, fmt, session_dir())


def table_bytes(df: pd.DataFrame, fmt: str, folder: Path) -> bytes:
    """The table as Parquet, CSV or JSON bytes with its provenance (`tiviz.table.write_table`), via `folder`."""
    from tiviz.table import FORMATS, write_table

    if fmt not in FORMATS:
        raise ConfigError("format", fmt, ", ".join(FORMATS))
    path = folder / f"export.{fmt}"
    write_table(df, path, fmt)
    return path.read_bytes()
