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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tiviz.config import AttributionConfig, result_settings
from tiviz.data import PreferencePair
from tiviz.tokenization import EncodedSequence

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


class AttributionCache:
    """Per-(pair, method) tables in `folder`, keyed as the module docstring says."""

    def __init__(self, folder: str | Path, model: Any, ref_model: Any | None, config: AttributionConfig) -> None:
        from tiviz import __version__

        self.folder = Path(folder)
        self._settings = config.to_dict()
        self._context = json.dumps({
            "tiviz": __version__, "model": weights_fingerprint(model),
            "ref": weights_fingerprint(ref_model) if ref_model is not None else None,
        }, sort_keys=True, default=str)
        self.hits = 0
        self.misses = 0

    def key(self, pair: PreferencePair, sides: tuple[EncodedSequence, EncodedSequence], method: str) -> str:
        what = json.dumps({
            "context": self._context, "method": method, "settings": result_settings(method, self._settings),
            "id": pair.id,
            "sides": [[s.prompt_text, s.response_text, list(map(int, s.input_ids)), s.response_start] for s in sides],
        }, sort_keys=True, default=str)
        return hashlib.sha256(what.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.parquet"

    def get(self, key: str) -> pd.DataFrame | None:
        path = self._path(key)
        try:
            df = pd.read_parquet(path)
        except FileNotFoundError:
            self.misses += 1
            return None
        except Exception as err:  # a damaged entry is recomputed, never trusted
            log.warning("attribution cache: ignoring unreadable %s (%s)", path, err)
            self.misses += 1
            return None
        self.hits += 1
        return df

    def put(self, key: str, rows: pd.DataFrame) -> None:
        """Write atomically (temporary file, then rename), so a killed run never leaves a half-written entry."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        rows.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, path)


def side_major(frames: list[pd.DataFrame], sides: tuple[str, ...]) -> pd.DataFrame:
    """One pair's per-method frames in the order `attribute` lays rows out: side, then method, then position."""
    df = pd.concat(frames, ignore_index=True)
    order = np.argsort(df["side"].map({s: i for i, s in enumerate(sides)}).to_numpy(), kind="stable")
    return df.iloc[order].reset_index(drop=True)
