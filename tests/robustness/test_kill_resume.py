"""Killed work loses nothing: `tiviz attribute --shard-dir` SIGKILLed mid-shard (with a half-written temp
file on disk) resumes with `--resume`, recomputes only the unfinished shards, and merges to the very table of an
uninterrupted run. Then the same run split over two processes with `accelerate launch`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest

from tiviz.attribution.shards import KILL_ENV, attribute_to_dir, merge_shards
from tiviz.data import load_pairs, save_pairs
from tiviz.models import load_model
from tiviz.table import PROVENANCE_KEY, read_table
from tiviz.testing import free_port, tiny_pairs

METHODS = "gradient,tidpo"
SETTINGS = ["--batch-size", "2", "--shard-size", "2"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """Eight pairs: four shards of two."""
    rows = [{**p, "id": f"{p['id']}-{k}"} for k in range(2) for p in tiny_pairs()]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    save_pairs(load_pairs(rows), path)
    return path


@pytest.fixture(scope="module")
def reference(tiny_folder, pairs_file, tmp_path_factory):
    """The uninterrupted run, in this process, through the same library call the CLI makes."""
    out = tmp_path_factory.mktemp("reference") / "shards"
    loaded = load_model(str(tiny_folder), device="cpu")
    attribute_to_dir(loaded, pairs_file, METHODS, out, shard_size=2, batch_size=2)
    return merge_shards(out)


def cli(args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env.update(env_extra or {})
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def attribute_cmd(tiny_folder, pairs_file, shard_dir, out, *extra):
    return [sys.executable, "-m", "tiviz.cli", "attribute", "--pairs", str(pairs_file), "--model", str(tiny_folder),
            "--methods", METHODS, "--device", "cpu", "--shard-dir", str(shard_dir), "--out", str(out),
            *SETTINGS, *extra]


def test_sigkill_mid_shard_then_resume_loses_nothing(tiny_folder, pairs_file, reference, tmp_path):
    shards, out = tmp_path / "shards", tmp_path / "merged.parquet"
    killed = cli(attribute_cmd(tiny_folder, pairs_file, shards, out), {KILL_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = sorted(p.name for p in shards.glob("shard-*.parquet"))
    partial = list(shards.glob("shard-00002.parquet.tmp-*"))
    assert finished == ["shard-00000.parquet", "shard-00001.parquet"] and len(partial) == 1
    assert partial[0].stat().st_size > 0 and not out.exists()
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("shard-*.parquet")}

    resumed = cli(attribute_cmd(tiny_folder, pairs_file, shards, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "computed 2 shard(s), skipped 2 finished earlier, of 4" in resumed.stdout
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("shard-*.parquet")}
    assert {k: after[k] for k in before} == before  # the finished shards were not rewritten
    assert not list(shards.glob("*.tmp-*"))  # the half-written temp file is gone

    merged = read_table(out)
    pd.testing.assert_frame_equal(merged, reference, check_exact=True)
    assert merged.attrs[PROVENANCE_KEY]["shards"]["count"] == 4


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate's launcher is not installed beside this Python")
def test_two_processes_with_accelerate_launch_equal_one(tiny_folder, pairs_file, reference, tmp_path):
    """Issue 6: each process takes shards i % 2 == rank; rank 0 merges after a barrier.

    `accelerate launch --cpu` starts a single process (accelerate 1.15 spreads CPU work over processes only
    through MPI), so the two processes come from the torch.distributed launcher (`--multi_gpu`), and tiviz
    joins them over gloo on the CPU."""
    shards, out = tmp_path / "shards", tmp_path / "merged.parquet"
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           *attribute_cmd(tiny_folder, pairs_file, shards, out)[1:]]
    done = cli(cmd, {"CUDA_VISIBLE_DEVICES": ""}, timeout=180)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "process 0/2: computed 2 shard(s)" in done.stdout and "process 1/2: computed 2 shard(s)" in done.stdout
    merged = read_table(out)
    # 1 thread per process under the launcher vs the test's threads: equal up to float summation order
    pd.testing.assert_frame_equal(merged, reference, check_exact=False, rtol=1e-5, atol=1e-7)
