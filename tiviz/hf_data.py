"""Hugging Face `datasets` as a source of preference pairs: a folder written by `save_to_disk`, a `Dataset`
(or `IterableDataset`, `DatasetDict`) object, or a hub dataset id streamed row by row, so `limit=100` of a
million-row set reads 100 rows. Rows come out as plain dicts; `tiviz.data.load_pairs` validates them exactly
as it validates a file's rows (errors name the row and the field).

Hub ids are written `owner/name` or `owner/name:config`. Hub access is checked with one quick connection
before `datasets` is asked (whose own retries take tens of seconds), so an offline machine fails in seconds.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tiviz.errors import DataError

# A hub dataset id: owner/name, optionally :config (hub names hold no ':', so the suffix is unambiguous).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_PROBE_TIMEOUT_S = 3.0
_OFFLINE_FIX = ("save the dataset on a machine with network (`Dataset.save_to_disk(folder)`) and pass the folder, "
                "or check the network / HF_ENDPOINT")


def is_hf_source(source: Any) -> bool:
    """True for a `datasets` object, a `save_to_disk` folder, or a string that reads as a hub dataset id (and
    names no local file or folder)."""
    if type(source).__module__.split(".")[0] == "datasets":
        return True
    if not isinstance(source, str | Path):
        return False
    path = Path(source)
    if path.is_dir():
        return is_saved_dataset(path)
    return isinstance(source, str) and not path.exists() and _looks_like_hub_id(source)


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` (state.json + dataset_info.json) or `DatasetDict.save_to_disk`
    (dataset_dict.json), the same test `datasets.load_from_disk` makes."""
    return ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()) or \
        (path / "dataset_dict.json").is_file()


def _looks_like_hub_id(text: str) -> bool:
    if not _HUB_ID.match(text) or text.lower().endswith(_FILE_SUFFIXES):
        return False
    return not Path(text.split("/")[0]).exists()  # "sample_data/missing" is a missing local path, not an id


def hf_rows(source: Any, *, split: str | None = None, limit: int | None = None) -> tuple[str, Iterator[Any]]:
    """(a label for error messages, an iterator over the rows as dicts) of a `datasets` source.

    Args:
        source: a `Dataset` / `IterableDataset` / `DatasetDict`, a `save_to_disk` folder, or a hub id
            (`owner/name` or `owner/name:config`).
        split: the split of a `DatasetDict` or a hub dataset; may be left out when there is only one
            (a hub dataset defaults to `train`).
        limit: read at most this many rows (a hub dataset streams only those).
    """
    if isinstance(source, str | Path) and not Path(source).is_dir():
        label, dataset = _open_hub(str(source), split)
    else:
        label = str(source) if isinstance(source, str | Path) else f"<{type(source).__name__}>"
        dataset = _pick_split(_open_saved(source) if isinstance(source, str | Path) else source, split, label)
        if split:
            label += f"[{split}]"
    rows = (_with_prompt(dict(row)) for row in dataset)
    return label, islice(rows, limit) if limit is not None else rows


def describe(source: Any, split: str | None = None) -> dict[str, Any]:
    """Provenance of a `datasets` source for a results table: what it was, which split, and for a saved or
    in-memory dataset its `datasets` fingerprint (which changes when the data does)."""
    if isinstance(source, str | Path) and not Path(source).is_dir():
        return {"hub_dataset": str(source), "split": split or "train"}
    info: dict[str, Any] = {"dataset": str(source) if isinstance(source, str | Path) else type(source).__name__,
                            "split": split}
    if isinstance(source, str | Path):
        source = _pick_split(_open_saved(source), split, str(source))
    fingerprint = getattr(source, "_fingerprint", None)
    if fingerprint:
        info["fingerprint"] = fingerprint
    return info


def _open_saved(path: str | Path) -> Any:
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(f"cannot read the saved dataset ({type(err).__name__}: {err})", source=str(path),
                        fix="pass a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk") from None


def _pick_split(dataset: Any, split: str | None, label: str) -> Any:
    """The split of a DatasetDict (the only one when there is one and none was asked); a Dataset as it is."""
    if not isinstance(dataset, Mapping):
        if split:
            raise DataError(f"is a single dataset, not a DatasetDict; there is no split {split!r}", source=label,
                            field="split", fix="leave out --split")
        return dataset
    names = list(dataset.keys())
    if split is None:
        if len(names) == 1:
            return dataset[names[0]]
        raise DataError(f"holds the splits {', '.join(names)}; which one?", source=label, field="split",
                        fix=f"pass --split (split= in Python), one of {', '.join(names)}")
    if split not in dataset:
        raise DataError(f"has no split {split!r}", source=label, field="split", fix=f"use one of {', '.join(names)}")
    return dataset[split]


def _open_hub(spec: str, split: str | None) -> tuple[str, Any]:
    """A streamed hub dataset, after a quick check that the hub can be reached at all."""
    name, _, config = spec.partition(":")
    split = split or "train"
    label = f"hub dataset {spec} [{split}]"
    if _hub_offline():
        raise DataError("the Hugging Face Hub is switched off here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set) "
                        "and streaming a hub dataset needs it", source=label, fix=_OFFLINE_FIX)
    reason = _hub_unreachable()
    if reason:
        raise DataError(f"the Hugging Face Hub cannot be reached ({reason}): this machine looks offline", source=label,
                        fix=_OFFLINE_FIX)
    from datasets import load_dataset

    try:
        return label, load_dataset(name, config or None, split=split, streaming=True)
    except Exception as err:  # datasets raises many types: missing dataset, bad config, gated, network
        raise DataError(f"cannot stream it ({type(err).__name__}: {err})", source=label,
                        fix="check the dataset id, config and split on the hub") from None


def _hub_offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(v.strip().upper() in ("1", "ON", "YES", "TRUE") for v in flags)


def _hub_unreachable() -> str | None:
    """Why a TCP connection to the hub endpoint fails within a few seconds, or None when it succeeds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError as err:
        return f"{host}:{port}: {err}"


def _with_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """TRL's implicit-prompt rows (no `prompt` column; chosen and rejected message lists that start with the
    same turns) get the shared leading turns as the prompt, as TRL's `extract_prompt` does; other rows pass."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if "prompt" in row or not isinstance(chosen, list) or not isinstance(rejected, list):
        return row
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        return row  # nothing shared: validation will report the missing prompt
    return {**row, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
