"""`report_to`: metrics reach experiment trackers under TRL's names (TensorBoard read back from its event file)."""

from __future__ import annotations

import pytest

from tiviz.data import load_pairs
from tiviz.errors import ConfigError
from tiviz.testing import tiny_pairs
from tiviz.training.metrics import read_metrics
from tiviz.training.trackers import require_trackers, tracker_record
from tiviz.training.trainer import TIDPOTrainer

from .conftest import fast_config, loaded_tiny


def test_tensorboard_events_hold_the_loss_and_reward_margins_of_every_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pairs = load_pairs(tiny_pairs())
    cfg = fast_config("dpo", max_steps=3, save_steps=0, report_to="tensorboard")
    TIDPOTrainer(loaded_tiny(), pairs, cfg, tmp_path / "run", eval_pairs=pairs[:2]).train()
    logged = {r["step"]: r for r in read_metrics(tmp_path / "run") if "loss" in r}  # metrics.jsonl stays
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under RUN/logs"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("train/loss", "train/rewards/margins", "train/rewards/accuracies", "eval/accuracy"):
        assert tag in tags, (tag, tags)
    for tag, key in (("train/loss", "loss"), ("train/rewards/margins", "rewards/margins")):
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert sorted(got) == [1, 2, 3]
        for step, value in got.items():
            assert value == pytest.approx(logged[step][key], rel=1e-5, abs=1e-6), (tag, step)


def test_a_missing_tracker_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install mlflow"):
        require_trackers(["mlflow"])
    with pytest.raises(ConfigError, match="report_to"):
        fast_config("dpo", report_to="tensorboard,neptune")


def test_tracker_names_follow_trl():
    rec = tracker_record({"step": 3, "loss": 0.5, "rewards/margins": 0.1, "eval/accuracy": 1.0})
    assert rec == {"train/loss": 0.5, "train/rewards/margins": 0.1, "eval/accuracy": 1.0}
