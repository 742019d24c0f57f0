"""Damaged run folders give clear errors, never tracebacks (issue 13 item 9): a truncated or altered
`final/model.safetensors` is refused by `tiviz attribute --model DIR` and shown as damaged in the app's run list;
a malformed checkpoint manifest is a `CheckpointError` and the previous checkpoint is used; a resume with another
model than the run's is refused."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from app import jobs
from tiviz.cli import main
from tiviz.data import load_pairs, save_pairs
from tiviz.errors import ModelError
from tiviz.models import load_model, save_model
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer
from tiviz.training import checkpoint as ckpt
from tiviz.training.config import config_from_preset
from tiviz.training.runfolder import (
    FINAL_FORMAT,
    final_dir,
    verify_model_folder,
    write_manifest,
    write_run_config,
    write_status,
)


def small_state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return {"model_state": dict(model.named_parameters()), "optimizer_state": opt.state_dict(),
            "scheduler_state": {"last_epoch": 0}, "trainer_state": {}}


@pytest.mark.parametrize("files", [[], {}, "entry without bytes", "entry not an object", "path outside"])
def test_malformed_checkpoint_manifest_is_a_checkpoint_error_with_fallback(tmp_path, caplog, files):
    ckpt.save_checkpoint(tmp_path, 1, **small_state(), keep=0)
    newest = ckpt.save_checkpoint(tmp_path, 2, **small_state(), keep=0)
    manifest = json.loads((newest / "manifest.json").read_text())
    if files == "entry without bytes":
        del manifest["files"]["optimizer.pt"]["bytes"]
    elif files == "entry not an object":
        manifest["files"]["optimizer.pt"] = "sha"
    elif files == "path outside":
        manifest["files"]["../../x"] = manifest["files"].pop("optimizer.pt")
    else:
        manifest["files"] = files
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="manifest"):
        ckpt.verify_checkpoint(newest)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="tiviz.training.checkpoint"):
        assert ckpt.latest_good_checkpoint(tmp_path).name == "step-0000001"
    assert "step-0000002" in caplog.text


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, **small_state())
    torch.save({"state": {}, "param_groups": []}, path / "optimizer.bin")  # accelerate would load this one
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.bin not listed"):
        ckpt.verify_checkpoint(path)


@pytest.fixture()
def run_with_final(tmp_path):
    """A finished run folder as the trainer leaves it: status finished, final/ with its manifest."""
    run = tmp_path / "runs" / "done"
    final = save_model(tiny_model(seed=0), final_dir(run), tokenizer=tiny_tokenizer())
    write_manifest(final, FINAL_FORMAT)
    write_status(run, "finished", 3, 3)
    pairs = tmp_path / "pairs.jsonl"
    save_pairs(load_pairs(tiny_pairs()), pairs)
    return run, pairs


def truncate(path, n=100):
    path.write_bytes(path.read_bytes()[:-n])


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("manifest", [True, False])
def test_truncated_final_weights_are_a_clear_error_in_the_cli(run_with_final, tmp_path, capsys, manifest):
    run, pairs = run_with_final
    final = final_dir(run)
    verify_model_folder(final)  # intact: passes
    if not manifest:
        (final / "manifest.json").unlink()  # a folder from elsewhere: the safetensors frame is still checked
    truncate(final / "model.safetensors")
    code = main(["attribute", "--pairs", str(pairs), "--model", str(final), "--methods", "gradient",
                 "--device", "cpu", "--out", str(tmp_path / "out.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.safetensors" in err and "truncated" in err
    assert not (tmp_path / "out.parquet").exists()


def test_altered_final_weights_fail_their_checksum_on_load(run_with_final):
    run, _ = run_with_final
    flip(final_dir(run) / "model.safetensors")  # same size, frame intact: only the checksum sees it
    with pytest.raises(ModelError, match="sha256"):
        load_model(str(final_dir(run)), device="cpu")


def test_the_app_run_list_shows_a_damaged_run(run_with_final):
    run, _ = run_with_final
    intact = shutil.copytree(run, run.with_name("intact"))
    truncate(final_dir(run) / "model.safetensors")
    runs = {r.name: r for r in jobs.list_runs(run.parent)}
    assert runs["intact"].finished and runs["intact"].state == "finished" and runs["intact"].problem is None
    assert not runs["done"].finished and runs["done"].state == "damaged"
    assert "model.safetensors" in runs["done"].problem and "truncated" in runs["done"].problem
    assert intact.exists()


def test_resume_with_another_model_is_refused(tiny_folder, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    save_pairs(load_pairs(tiny_pairs()), pairs)
    other = shutil.copytree(tiny_folder, tmp_path / "other-model")
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, {"tidpo": config_from_preset("dpo", max_steps=2).to_dict(), "model": str(tiny_folder),
                           "data": {"file": str(pairs)}})
    code = main(["train", "--resume", str(run), "--model", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"started with model '{tiny_folder}'" in err and str(other) in err
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
