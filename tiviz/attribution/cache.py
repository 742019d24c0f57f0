"""On-disk cache of attributions, one Parquet file per (pair, method), so nothing is computed twice.

The key is a hash of everything that decides the rows: the model's weights (a hash of every parameter, so a
model trained in place or a folder rewritten under the same name gets new keys), the reference model's weights,
the method, the settings that change its scores (`tiviz.config.result_settings`: batch sizes and other methods'
settings do not), the pair's id, its texts and the exact token ids both sides were encoded to, and the tiviz
version. A cached row is the row the same call would compute, up to
the float noise of a different padding or batch.

    df = attribute(lm, pairs, ["gradient", "tidpo"], cache=True)             # computes, writes the cache
    df = attribute(lm, pairs, ["gradient", "tidpo", "attention"], cache=True)  # computes attention only
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tiviz.config import AttributionConfig, result_settings
from tiviz.data import PreferencePair
from tiviz.errors import ConfigError
from tiviz.tokenization import SIDES, EncodedSequence

log = logging.getLogger(__name__)


def default_folder() -> Path:
    """`<tiviz cache dir>/attributions` ($TIVIZ_CACHE_DIR or ~/.cache/tiviz)."""
    from tiviz.models import cache_dir

    return cache_dir() / "attributions"


def weights_fingerprint(model: Any) -> str:
    """A hash of every parameter and buffer (names, shapes, dtypes and values): 1.2 s for the 135M-parameter
    default model on one CPU thread."""
    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


LIMIT_ENV = "TIVIZ_CACHE_MAX_MB"
DEFAULT_LIMIT_MB = 2048.0
ENTRY_KEY = b"tiviz-cache"  # Parquet key/value metadata of an entry: what it must hold, and its checksum
ENTRY_FORMAT = "tiviz-cache/1"
STALE_TMP_S = 3600.0  # a temporary file this old is a dead writer's, whatever its pid says


def limit_bytes() -> int:
    """The cache's size limit: $TIVIZ_CACHE_MAX_MB megabytes (default 2048; `tiviz ... --cache-max-mb`)."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_LIMIT_MB
    except ValueError:
        mb = float("nan")
    if not mb >= 0:  # NaN and negatives
        raise ConfigError(LIMIT_ENV, raw, "a size in megabytes >= 0")
    return int(mb * 2**20)


def rows_checksum(df: pd.DataFrame) -> str:
    """SHA-256 of a frame's columns (names, then values: numbers as float64/int64 bytes, text as UTF-8), the
    same for a frame before writing and after reading back whatever dtypes Parquet gives its text columns."""
    h = hashlib.sha256()
    for name in df.columns:
        col = df[name]
        h.update(f"\x1e{name}:{len(col)}\x1f".encode())
        if pd.api.types.is_bool_dtype(col):
            h.update(col.to_numpy(dtype=np.bool_).tobytes())
        elif pd.api.types.is_integer_dtype(col):
            h.update(col.to_numpy(dtype=np.int64).tobytes())
        elif pd.api.types.is_float_dtype(col):
            h.update(col.to_numpy(dtype=np.float64).tobytes())
        else:
            h.update("\x1f".join(map(str, col.tolist())).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass(frozen=True)
class _Expected:
    """What the entry under one key must hold: a pair's rows under one method, both sides' exact tokens."""

    pair_id: str
    method: str
    sides: tuple[tuple[str, list[int]], ...]  # (side, token ids) in row order


class AttributionCache:
    """Per-(pair, method) tables in `folder`, keyed as the module docstring says.

    Every entry is checked before it is used: its recorded key, pair id, method and row count, its sides and
    token ids against the sequences just encoded, and a checksum of its rows written with it. Any mismatch (a
    damaged, edited, truncated or misplaced file) is logged and the entry is recomputed. Past `limit_bytes()`
    the least recently used entries are deleted.
    """

    def __init__(self, folder: str | Path, model: Any, ref_model: Any | None, config: AttributionConfig,
                 scorer: dict[str, Any] | None = None) -> None:
        from tiviz import __version__

        self.folder = Path(folder)
        self._settings = config.to_dict()
        self._context = json.dumps({
            "tiviz": __version__, "model": weights_fingerprint(model),
            "ref": weights_fingerprint(ref_model) if ref_model is not None else None,
            "scorer": scorer,  # its kind (a PEFT policy scores alone or against itself without the adapter)
        }, sort_keys=True, default=str)
        self._expected: dict[str, _Expected] = {}
        self.hits = 0
        self.misses = 0
        self.limit = limit_bytes()
        self._size = self._remove_stale_and_measure()
        if self._size > self.limit:
            self.trim()

    def key(self, pair: PreferencePair, sides: tuple[EncodedSequence, EncodedSequence], method: str) -> str:
        what = json.dumps({
            "context": self._context, "method": method, "settings": result_settings(method, self._settings),
            "id": pair.id,
            "sides": [[s.prompt_text, s.response_text, list(map(int, s.input_ids)), s.response_start] for s in sides],
        }, sort_keys=True, default=str)
        key = hashlib.sha256(what.encode("utf-8")).hexdigest()
        self._expected[key] = _Expected(pair.id, method, tuple(
            (name, list(map(int, s.input_ids))) for name, s in zip(SIDES, sides, strict=True)))
        return key

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.parquet"

    def get(self, key: str) -> pd.DataFrame | None:
        """The entry's rows if it holds exactly what `key` stands for, else None (recompute), saying why."""
        path = self._path(key)
        try:
            table = pq.read_table(path)
            df = table.to_pandas()
            meta = json.loads((table.schema.metadata or {}).get(ENTRY_KEY, b"null"))
            problem = self._check(key, df, meta)
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception as err:  # pyarrow raises many types for a damaged file; JSON, Unicode errors too
            problem = f"unreadable ({type(err).__name__}: {str(err)[:200]})"
        if problem:
            log.warning("attribution cache: recomputing %s: %s", path, problem)
            self.misses += 1
            return None
        self.hits += 1
        _touch(path)
        return df

    def _check(self, key: str, df: pd.DataFrame, meta: Any) -> str | None:
        """What is wrong with an entry read under `key`, or None when it is what the key stands for."""
        if not isinstance(meta, dict) or meta.get("format") != ENTRY_FORMAT:
            return "no tiviz cache record (not written by this cache, or rewritten)"
        if meta.get("key") != key:
            return "recorded under another key (copied from another entry)"
        if meta.get("rows") != len(df) or meta.get("checksum") != rows_checksum(df):
            return f"its rows do not match their checksum ({len(df)} rows, {meta.get('rows')} written)"
        want = self._expected.get(key)
        if want is None:
            return "no expectation for this key (key() was not called)"
        n = sum(len(ids) for _, ids in want.sides)
        if len(df) != n:
            return f"{len(df)} rows, expected {n} (one per token of both sides)"
        if not set(("pair_id", "method", "side", "token_id", "position")) <= set(df.columns):
            return "columns missing"
        if (df["pair_id"].astype(str) != want.pair_id).any() or (df["method"].astype(str) != want.method).any():
            return f"holds rows of another pair or method (expected {want.pair_id!r}, {want.method!r})"
        side = df["side"].astype(str).to_numpy()
        token = df["token_id"].to_numpy()
        position = df["position"].to_numpy()
        start = 0
        for name, ids in want.sides:
            end = start + len(ids)
            if ((side[start:end] != name).any() or not np.array_equal(token[start:end], ids)
                    or not np.array_equal(position[start:end], np.arange(len(ids)))):
                return f"the {name} side's tokens differ from the encoded sequence"
            start = end
        return None

    def put(self, key: str, rows: pd.DataFrame) -> None:
        """Write atomically (temporary file, then rename), so a killed run never leaves a half-written entry; the
        entry records its key, pair, method, row count and a checksum of its rows."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        rows = rows.reset_index(drop=True)
        want = self._expected.get(key)
        record = {"format": ENTRY_FORMAT, "key": key, "rows": len(rows), "checksum": rows_checksum(rows),
                  "pair_id": want.pair_id if want else None, "method": want.method if want else None}
        table = pa.Table.from_pandas(rows, preserve_index=False)
        meta = {**(table.schema.metadata or {}), ENTRY_KEY: json.dumps(record).encode()}
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        old = path.stat().st_size if path.exists() else 0
        os.replace(tmp, path)
        self._size += path.stat().st_size - old
        if self._size > self.limit:
            self.trim()

    def trim(self) -> None:
        """Delete the least recently used entries (by modification time, which a hit refreshes) until the
        cache is under its limit."""
        found = sorted(_entries(self.folder), key=lambda e: e[1])
        total = sum(size for _, _, size in found)
        removed = 0
        for path, _, size in found:
            if total <= self.limit:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        if removed:
            log.info("attribution cache: evicted %d least recently used entries (limit %.0f MB, $%s)", removed,
                     self.limit / 2**20, LIMIT_ENV)
        self._size = total

    def _remove_stale_and_measure(self) -> int:
        """Delete temporary files left by dead writers (their pid is gone, or they are over an hour old); return
        the size of the entries."""
        if not self.folder.is_dir():
            return 0
        now = time.time()
        for tmp in self.folder.glob("*/.*.tmp"):
            try:
                pid = int(tmp.name.rsplit(".", 2)[-2])
                age = now - tmp.stat().st_mtime
            except (ValueError, OSError):
                continue
            if age > STALE_TMP_S or not _alive(pid):
                log.info("attribution cache: removing %s, left by an interrupted writer", tmp)
                tmp.unlink(missing_ok=True)
        return sum(size for _, _, size in _entries(self.folder))


def _entries(folder: Path) -> list[tuple[Path, float, int]]:
    """(path, modification time, bytes) of every entry."""
    out = []
    for path in folder.glob("*/*.parquet"):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path, st.st_mtime, st.st_size))
    return out


def _touch(path: Path) -> None:
    """Mark an entry as just used (least-recently-used order is modification time)."""
    try:
        os.utime(path)
    except OSError:  # a read-only cache still serves hits
        pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def side_major(frames: list[pd.DataFrame], sides: tuple[str, ...]) -> pd.DataFrame:
    """One pair's per-method frames in the order `attribute` lays rows out: side, then method, then position."""
    df = pd.concat(frames, ignore_index=True)
    order = np.argsort(df["side"].map({s: i for i, s in enumerate(sides)}).to_numpy(), kind="stable")
    return df.iloc[order].reset_index(drop=True)
