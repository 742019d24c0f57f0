"""Two CPU processes under `accelerate launch` (DDP over gloo) train like one process with the same global batch.

The launched script is the real CLI, `tiviz train --model DIR` on the tiny model saved with
`tiviz.models.save_model`. accelerate 1.15's `launch --cpu` starts a single process (its multi-CPU path needs MPI),
so the two processes are started with the torchrun launcher (`--multi_gpu`) and `ACCELERATE_USE_CPU=1`; without
CUDA the trainer asks accelerate for CPU, which then sets up gloo DDP (the same `accelerate launch` works unchanged
on a multi-GPU machine). The `no-triplet` preset keeps the TI-DPO weights (taken from the DDP-wrapped forward) and
the sequential KL term, and leaves out anchor sampling, whose draws depend on how prompts are batched.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiviz.data import load_pairs
from tiviz.models import load_model
from tiviz.training.metrics import read_metrics
from tiviz.training.trainer import TIDPOTrainer

from .conftest import fast_config, fast_flags, subprocess_env

KEYS = ("loss", "loss/dpo_w", "rewards/margins", "rewards/accuracies", "kl/chosen", "kl/rejected", "logps/chosen",
        "weights/entropy", "grad_norm", "learning_rate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir, tiny_pairs_file):
    steps = 3
    # one process, 4 pairs per step
    single = TIDPOTrainer(load_model(str(tiny_model_dir), device="cpu"), load_pairs(tiny_pairs_file),
                          fast_config("no-triplet", max_steps=steps, batch_size=4), tmp_path / "one")
    single.train()
    # two processes, 2 pairs each per step
    run = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "-m", "tiviz.cli", "train", "--model", str(tiny_model_dir), "--pairs", str(tiny_pairs_file),
           "--out", str(run), "--preset", "no-triplet", *fast_flags(max_steps=steps, batch_size=2)]
    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["global_batch"] == 4
    assert sorted((run / "checkpoints" / "step-0000003").glob("random_states_*.pkl")) == [
        run / "checkpoints" / "step-0000003" / f"random_states_{r}.pkl" for r in (0, 1)]
    one = {r["step"]: r for r in read_metrics(tmp_path / "one") if "loss" in r}
    two = {r["step"]: r for r in read_metrics(run) if "loss" in r}
    assert sorted(one) == sorted(two) == list(range(1, steps + 1))
    assert one[steps]["rewards/margins"] > 0.1  # the model moved: the comparison is not of untrained states
    for step in one:
        for key in KEYS:
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-4, abs=1e-5), (step, key)
    ours = {n: p.detach() for n, p in single.policy.named_parameters()}
    theirs = load_file(str(run / "final" / "model.safetensors"))
    for name, value in theirs.items():
        if name in ours:
            torch.testing.assert_close(value, ours[name], rtol=1e-4, atol=1e-5)
