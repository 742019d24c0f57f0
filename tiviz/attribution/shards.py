"""Attribution written shard by shard into a folder, so a killed run loses at most the shard in progress.

`attribute_to_dir` splits the pairs into shards of `shard_size`, attributes each and writes it as one Parquet
table (temp file, fsync, rename: a shard file is whole or absent). A `manifest.json` records what the run is:
model (id, revision and a fingerprint of its weights), methods, settings, and a SHA-256 of every shard's pair
ids and texts. A rerun into the same folder skips every shard whose file is complete and carries the manifest's
hash; a rerun with other weights, settings or data refuses to mix with the results there. Several processes (`accelerate launch`) share one folder: process `rank`
of `world_size` takes the shards with `index % world_size == rank`; `merge_shards` then joins them into one table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tiviz.config import AttributionConfig
from tiviz.data import PreferencePair, load_pairs
from tiviz.errors import ConfigError, TableError
from tiviz.table import PROVENANCE_KEY, read_table, validate, write_table

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "tiviz-shards/1"
SHARD_KEY = "shard"  # provenance entry of a shard table: its index and pair hash
# Test hook: after writing this many shards, start the next shard's temp file, then SIGKILL the process.
KILL_ENV = "TIVIZ_TEST_KILL_AFTER_SHARDS"
# Manifest entries that must agree before a folder's shards may be reused ("data" names the file only).
_IDENTITY = ("format", "model_id", "model_revision", "model_weights", "reference_model", "reference_weights",
             "methods", "settings", "shard_size", "n_pairs", "tiviz_version", "shards")


@dataclass
class ShardRun:
    """What one `attribute_to_dir` call did: shards computed here, shards found finished, the whole plan."""

    out_dir: Path
    n_shards: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1


def shard_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / f"shard-{index:05d}.parquet"


def pairs_hash(pairs: Sequence[PreferencePair]) -> str:
    """SHA-256 of the pairs' ids and texts (prompt, chosen, rejected), in order: what a shard's scores depend on."""
    payload = [[p.id, p.prompt, p.chosen, p.rejected] for p in pairs]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def plan_shards(pairs: Sequence[PreferencePair], shard_size: int) -> list[list[PreferencePair]]:
    """Consecutive shards of `shard_size` pairs (the last one may be shorter)."""
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise ConfigError("shard_size", shard_size, "an integer >= 1")
    return [list(pairs[i : i + shard_size]) for i in range(0, len(pairs), shard_size)]


def build_manifest(
    pairs: Sequence[PreferencePair],
    methods: list[str],
    cfg: AttributionConfig,
    shard_size: int,
    *,
    model_id: str,
    model_revision: str | None,
    reference_model: str | None,
    data_info: dict[str, Any] | None = None,
    model_weights: str | None = None,
    reference_weights: str | None = None,
) -> dict[str, Any]:
    """The manifest of a sharded run: everything that decides its results (the weights by their fingerprint,
    `tiviz.attribution.cache.weights_fingerprint`, since a local folder has no revision), and each shard's pair
    hash."""
    from tiviz import __version__

    shards = plan_shards(pairs, shard_size)
    return {
        "format": FORMAT,
        "model_id": model_id,
        "model_revision": model_revision,
        "model_weights": model_weights,
        "reference_model": reference_model,
        "reference_weights": reference_weights,
        "methods": list(methods),
        "settings": cfg.to_dict(),
        "shard_size": shard_size,
        "n_pairs": len(pairs),
        "tiviz_version": __version__,
        "shards": [
            {"index": i, "file": shard_path(".", i).name, "n_pairs": len(s), "first_id": s[0].id,
             "sha256": pairs_hash(s)}
            for i, s in enumerate(shards)
        ],
        "data": data_info or {},
    }


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, None if it has none; a damaged one is a `TableError`."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TableError(f"{path}: cannot read the shard manifest ({type(err).__name__}: {err}). "
                         "Fix: use a new shard folder, or delete this one") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(
            manifest.get("shards"), list):
        raise TableError(f"{path}: not a tiviz shard manifest ({FORMAT}). Fix: use a new shard folder")
    return manifest


def finished_shards(out_dir: str | Path, manifest: dict[str, Any] | None = None) -> list[int]:
    """Indices of the shards whose file is complete and holds the manifest's pairs."""
    manifest = manifest if manifest is not None else read_manifest(out_dir)
    if manifest is None:
        return []
    return [s["index"] for s in manifest["shards"] if _shard_is_done(shard_path(out_dir, s["index"]), s["sha256"])]


def attribute_to_dir(
    model: Any,
    pairs: Sequence[PreferencePair] | Any,
    methods: str | Sequence[str] | None,
    out_dir: str | Path,
    *,
    shard_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    config: AttributionConfig | None = None,
    tokenizer: Any | None = None,
    ref_model: Any | None = None,
    model_id: str | None = None,
    data_info: dict[str, Any] | None = None,
    progress: Any | None = None,
    **settings: Any,
) -> ShardRun:
    """Attribute `pairs` shard by shard into `out_dir`, skipping shards already finished there.

    Args:
        model, pairs, methods, config, tokenizer, ref_model, model_id, data_info, settings: as in
            `tiviz.attribute`.
        out_dir: the shard folder (created if missing).
        shard_size: pairs per shard (default 32); a killed run loses at most one shard of work per process.
        rank, world_size: this process takes the shards with index % world_size == rank.
        progress: called as progress(pairs_done, pairs_total) over this process's shards.
    Returns:
        a `ShardRun` listing the shards computed now and those skipped as finished.
    Raises:
        TableError: `out_dir` holds shards of a run with other settings, model, methods or data.
    """
    from tiviz.attribution.core import attribute
    from tiviz.attribution.methods import resolve_methods

    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ConfigError("rank", rank, f"an integer in [0, world_size={world_size})")
    cfg = AttributionConfig.from_dict({**(config.to_dict() if config else {}), **settings})
    names = resolve_methods(methods)
    if not isinstance(pairs, list | tuple) or (pairs and not isinstance(pairs[0], PreferencePair)):
        pairs = load_pairs(pairs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TableError(f"{out}: is a file, not a folder. Fix: give --shard-dir a folder (new or from a run)")
    out.mkdir(parents=True, exist_ok=True)
    from tiviz.attribution.cache import weights_fingerprint

    manifest = build_manifest(
        pairs, names, cfg, shard_size, model_id=_model_id(model, model_id),
        model_revision=getattr(model, "revision", None),
        reference_model=getattr(getattr(ref_model, "config", None), "name_or_path", None) if ref_model else None,
        data_info=data_info, model_weights=weights_fingerprint(getattr(model, "model", model)),
        reference_weights=weights_fingerprint(getattr(ref_model, "model", ref_model)) if ref_model else None,
    )
    existing = read_manifest(out)
    if existing is None:
        _write_json_atomic(out / MANIFEST, manifest)
    else:
        _check_same_run(out, existing, manifest)
    shards = plan_shards(pairs, shard_size)
    mine = [i for i in range(len(shards)) if i % world_size == rank]
    run = ShardRun(out, len(shards), rank=rank, world_size=world_size)
    total = sum(len(shards[i]) for i in mine)
    done_pairs = 0
    for i in mine:
        path = shard_path(out, i)
        _remove_partial_files(path)
        entry = manifest["shards"][i]
        if _shard_is_done(path, entry["sha256"]):
            run.skipped.append(i)
        else:
            df = attribute(model, shards[i], names, tokenizer=tokenizer, ref_model=ref_model, config=cfg,
                           model_id=model_id, data_info=data_info)
            df.attrs[PROVENANCE_KEY][SHARD_KEY] = {"index": i, "of": len(shards), "sha256": entry["sha256"]}
            _kill_if_asked(len(run.computed), df, path)
            write_table(df, path)
            run.computed.append(i)
            log.info("shard %d/%d written (%d pairs) to %s", i + 1, len(shards), len(shards[i]), path)
        done_pairs += len(shards[i])
        if progress is not None:
            progress(done_pairs, total)
    if run.skipped:
        log.info("%s: skipped %d finished shard(s), computed %d", out, len(run.skipped), len(run.computed))
    return run


def merge_shards(out_dir: str | Path) -> pd.DataFrame:
    """Join a finished shard folder into one validated tidy table, in pair order, with the run's provenance.

    Raises:
        TableError: no manifest, a shard missing or from another run; the message says how to finish the run.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    if manifest is None:
        raise TableError(f"{out}: no {MANIFEST}; not a tiviz shard folder. Fix: pass the folder given to "
                         "`tiviz attribute --shard-dir`")
    entries = manifest["shards"]
    if not entries:
        raise TableError(f"{out}: the run has no pairs, so no shards. Fix: attribute a non-empty dataset")
    missing = [s["index"] for s in entries if not shard_path(out, s["index"]).is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise TableError(f"{out}: {len(missing)} of {len(entries)} shard(s) not finished ({shown}). Fix: rerun "
                         "the same `tiviz attribute --shard-dir ... --resume` command to finish them")
    frames = []
    prov: dict[str, Any] = {}
    for s in entries:
        df = read_table(shard_path(out, s["index"]))
        info = df.attrs.get(PROVENANCE_KEY, {})
        if info.get(SHARD_KEY, {}).get("sha256") != s["sha256"]:
            raise TableError(f"{shard_path(out, s['index'])}: holds other pairs than the manifest says. "
                             "Fix: delete that shard file and rerun with --resume")
        prov = prov or {k: v for k, v in info.items() if k != SHARD_KEY}
        frames.append(df)
    merged = validate(pd.concat(frames, ignore_index=True), source=str(out))
    prov["data"] = manifest.get("data") or prov.get("data", {})
    prov["shards"] = {"folder": str(out), "count": len(entries), "shard_size": manifest["shard_size"],
                      "pairs_sha256": [s["sha256"] for s in entries]}
    merged.attrs = {PROVENANCE_KEY: prov}
    return merged


# ---------------------------------------------------------------------------------------------- internals


def _model_id(model: Any, model_id: str | None) -> str:
    """The id `attribute` records in provenance: explicit, a LoadedModel's, else the HF config's name."""
    if model_id:
        return model_id
    if getattr(model, "model_id", None):
        return str(model.model_id)
    inner = getattr(model, "model", model)
    return str(getattr(getattr(inner, "config", None), "name_or_path", "") or "unknown")


def _check_same_run(out: Path, existing: dict[str, Any], manifest: dict[str, Any]) -> None:
    for key in _IDENTITY:
        if existing.get(key) == manifest.get(key):
            continue
        detail = _first_difference(key, existing.get(key), manifest.get(key))
        raise TableError(f"{out}: holds shards of a different run ({detail}). Fix: use a new shard folder, or "
                         "delete this one to start over; tiviz does not mix results of different runs")


def _first_difference(key: str, there: Any, here: Any) -> str:
    if isinstance(there, dict) and isinstance(here, dict):
        for k in sorted(set(there) | set(here)):
            if there.get(k) != here.get(k):
                return f"{key}.{k}: {here.get(k)!r} now, {there.get(k)!r} in the folder"
    if key == "shards" and isinstance(there, list) and isinstance(here, list):
        for a, b in zip(there, here, strict=False):
            if a != b:
                return (f"shard {b.get('index')}: the ids or texts of its pairs differ (first id "
                        f"{b.get('first_id')!r} now, {a.get('first_id')!r} in the folder)")
        return f"{len(here)} shards now, {len(there)} in the folder"
    return f"{key}: {here!r} now, {there!r} in the folder"


def _shard_is_done(path: Path, sha256: str) -> bool:
    """A shard counts as finished when its file opens as Parquet and records the expected pair hash."""
    if not path.is_file():
        return False
    try:
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        info = json.loads(meta.get(PROVENANCE_KEY.encode(), b"{}"))
    except Exception as err:  # a damaged file: recompute it rather than trust it
        log.warning("%s: unreadable (%s: %s); computing that shard again", path, type(err).__name__, err)
        return False
    return isinstance(info, dict) and info.get(SHARD_KEY, {}).get("sha256") == sha256


def _remove_partial_files(path: Path) -> None:
    """Delete temp files a killed writer left beside this shard (only this shard's: others may be in flight)."""
    for tmp in path.parent.glob(path.name + ".tmp-*"):
        log.info("removing the partial file %s left by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _kill_if_asked(shards_written: int, df: pd.DataFrame, path: Path) -> None:
    """Test hook (`TIVIZ_TEST_KILL_AFTER_SHARDS=N`): once N shards are written, leave the next shard as a half
    written temp file and SIGKILL this process, as a crash or an out-of-memory kill would mid-write."""
    limit = os.environ.get(KILL_ENV)
    if limit is None or shards_written != int(limit):
        return
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    staging = write_table(df, path.with_name(f"kill-staging-{os.getpid()}.parquet"))
    data = staging.read_bytes()
    staging.unlink()
    with open(tmp, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    log.warning("%s=%s: killing the process with a half-written %s", KILL_ENV, limit, tmp.name)
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
