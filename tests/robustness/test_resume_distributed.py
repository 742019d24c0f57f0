"""Checkpoints written through `accelerator.save_state` resume a two-process run (DDP over gloo, CPU) exactly:
a run cut back to its step-2 checkpoint and resumed under `accelerate launch` logs steps 3-4 as an uninterrupted
two-process run does, and ends with the same weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiviz.data import load_pairs, save_pairs
from tiviz.testing import tiny_pairs

from .test_kill_resume import free_port

pytestmark = pytest.mark.slow

FLAGS = ["--preset", "no-triplet", "--batch-size", "2", "--max-length", "64", "--max-prompt-length", "32",
         "--logging-steps", "1", "--learning-rate", "1e-2", "--save-steps", "2", "--save-total-limit", "0"]
KEYS = ("loss", "rewards/margins", "rewards/accuracies", "grad_norm", "learning_rate")


def launch(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(free_port()), "-m", "tiviz.cli", "train", *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def logged(run) -> dict[int, dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in recs if "loss" in r}


def test_two_process_run_resumed_from_a_checkpoint_equals_an_uninterrupted_one(tiny_folder, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    save_pairs(load_pairs(tiny_pairs()), pairs)
    common = ["--model", str(tiny_folder), "--pairs", str(pairs), *FLAGS, "--max-steps", "4"]
    full, part = tmp_path / "full", tmp_path / "part"
    launch(*common, "--out", str(full))
    launch(*common, "--out", str(part))
    ck = part / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in ck.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.bin", "random_states_0.pkl", "random_states_1.pkl",
        "scheduler.pt", "trainer_state.json"]
    shutil.rmtree(part / "checkpoints" / "step-0000004")  # back to step 2, as if killed after it
    shutil.rmtree(part / "final")
    launch("--resume", str(part))

    a, b = logged(full), logged(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a[4]["rewards/margins"] > 0.05  # the model moved: later steps depend on the restored state
    for step in (3, 4):
        for key in KEYS:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-8), (step, key)
    wa, wb = load_file(str(full / "final" / "model.safetensors")), load_file(str(part / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-6, atol=1e-7)
