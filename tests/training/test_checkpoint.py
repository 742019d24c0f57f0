"""Checkpoints: written atomically with a checksum manifest, verified before use, read without unpickling
arbitrary objects; and the metrics log that goes with them."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from tiviz.training import checkpoint as ckpt
from tiviz.training.metrics import MetricsWriter, read_metrics, truncate_after


def tiny_state(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return {"model_state": dict(model.named_parameters()), "optimizer_state": opt.state_dict(),
            "scheduler_state": sched.state_dict(), "trainer_state": {"epoch": step / 2}}


def test_checkpoint_round_trip_with_manifest(tmp_path):
    state = tiny_state(3)
    path = ckpt.save_checkpoint(tmp_path, 3, **state)
    assert path == tmp_path / "checkpoints" / "step-0000003"
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pt",
                                      "trainer_state.json"}
    for name, info in manifest["files"].items():
        assert info["sha256"] == ckpt.file_sha256(path / name)
    back = ckpt.load_checkpoint(path)
    assert back.step == 3 and back.trainer_state["epoch"] == 1.5
    for name, value in state["model_state"].items():
        assert torch.equal(back.model_state[name], value.detach())
    opt_state = back.optimizer_state["state"][0]
    assert torch.equal(opt_state["exp_avg"], state["optimizer_state"]["state"][0]["exp_avg"])
    assert back.scheduler_state["last_epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_rng_state_round_trip_restores_every_generator(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    ckpt.save_checkpoint(tmp_path, 1, **tiny_state(1))
    want = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    ckpt.set_rng_state(ckpt.load_checkpoint(ckpt.latest_good_checkpoint(tmp_path)).rng_state)
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and got[1] == want[1] and got[2] == want[2]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "no_manifest", "bad_manifest"])
def test_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, caplog, damage):
    ckpt.save_checkpoint(tmp_path, 2, **tiny_state(2), keep=0)
    newest = ckpt.save_checkpoint(tmp_path, 4, **tiny_state(4), keep=0)
    target = newest / "optimizer.pt"
    if damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[len(data) // 3] ^= 0x40
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-5])
    elif damage == "delete_file":
        target.unlink()
    elif damage == "no_manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "manifest.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.verify_checkpoint(newest)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="tiviz.training.checkpoint"):
        assert ckpt.latest_good_checkpoint(tmp_path).name == "step-0000002"
    assert "step-0000004" in caplog.text


class Payload:
    """Not a tensor or plain container: `torch.load(weights_only=True)` must refuse to rebuild it."""

    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_pickled_objects_are_refused_even_with_a_matching_manifest(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, **tiny_state(1))
    torch.save({"state": {}, "param_groups": [], "evil": Payload()}, path / "optimizer.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["optimizer.pt"] = {"sha256": ckpt.file_sha256(path / "optimizer.pt"),
                                         "bytes": (path / "optimizer.pt").stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))
    ckpt.verify_checkpoint(path)  # the checksums agree: only the safe loader stands in the way
    with pytest.raises(ckpt.CheckpointError, match="cannot read"):
        ckpt.load_checkpoint(path)


def test_partial_folders_are_not_checkpoints_and_are_removed(tmp_path):
    ckpt.save_checkpoint(tmp_path, 2, **tiny_state(2))
    tmp = ckpt.begin_checkpoint(tmp_path, 4)
    (tmp / "model.safetensors").write_bytes(b"half")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000002"]
    assert ckpt.remove_partial(tmp_path) == [tmp] and not tmp.exists()


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, **tiny_state(step), keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000003", "step-0000004"]


def test_metrics_log_skips_a_partial_last_line_and_truncates_for_a_resume(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    w = MetricsWriter(path)
    for step in (1, 2, 3):
        w.write({"step": step, "loss": 1.0 / step, "kl/chosen": float("nan")})
    with open(path, "a") as fh:
        fh.write('{"step": 4, "lo')  # a kill in mid-write
    with caplog.at_level(logging.WARNING):
        recs = read_metrics(path)
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[0]["kl/chosen"] is None
    assert truncate_after(path, 2) == 1
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert path.read_text().endswith("\n") and "lo\n" not in path.read_text()
    assert truncate_after(path, 5) == 0
