"""The training metrics log: one JSON object per logged optimizer step in `RUN/metrics.jsonl`.

Keys follow TRL's names (`loss`, `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`, `rewards/margins`,
`logps/chosen`, `logps/rejected`) plus TI-DPO's own (`loss/dpo_w`, `loss/triplet`, `kl/chosen`, `kl/rejected`,
`weights/entropy`) and `step`, `epoch`, `learning_rate`, `elapsed_s`. Appends are flushed and fsynced line by
line, so a killed run leaves at most one partial last line, which the reader skips.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tiviz.training.runfolder import METRICS_FILE

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends records to a JSONL file, one line per record, durable once `write` returns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _clean(v) for k, v in record.items()}, ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics log, in file order; a missing file gives []. A malformed line (the
    partial last line of a killed run) is skipped with a warning."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s, line %d: skipping a malformed metrics record", path, lineno)
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def truncate_after(path: str | Path, step: int) -> int:
    """Keep only the records with `step <= step` (a resumed run rewrites what came after its checkpoint).

    The file is replaced atomically. Returns how many records were dropped.
    """
    path = Path(path)
    records = read_metrics(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    if len(kept) == len(records) and path.exists() and _ends_cleanly(path):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    _write_all(tmp, kept)
    os.replace(tmp, path)
    return len(records) - len(kept)


def _ends_cleanly(path: Path) -> bool:
    data = path.read_bytes()
    return not data or (data.endswith(b"\n") and all(_is_json(x) for x in data.splitlines() if x.strip()))


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def _write_all(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps({k: _clean(v) for k, v in rec.items()}, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def metrics_frame(path: str | Path) -> Any:
    """The metrics log as a pandas DataFrame (one row per logged step), for plots in the app and reports."""
    import pandas as pd

    return pd.DataFrame.from_records(read_metrics(path))
