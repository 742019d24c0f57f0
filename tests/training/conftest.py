"""Fixtures for the trainer tests: the tiny model as a LoadedModel, saved to a folder (for subprocesses), the tiny
pairs as a file, and fast settings. Torch runs single-threaded here: on the shared 2-core CI machine two threads
contend and make the tiny model's forward ~50x slower, and one thread keeps float results reproducible."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tiviz.models import LoadedModel, save_model
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer
from tiviz.training.config import TIDPOConfig, config_from_preset

FAST = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "save_steps": 2,
        "anchor_max_new_tokens": 8, "max_length": 96, "max_prompt_length": 48}


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def loaded_tiny(seed: int = 0) -> LoadedModel:
    return LoadedModel(tiny_model(seed), tiny_tokenizer(), "tiny")


def fast_config(preset: str = "paper", **overrides: Any) -> TIDPOConfig:
    return config_from_preset(preset, **{**FAST, **overrides})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_model(0) + tiny_tokenizer() saved with tiviz.models.save_model, for `tiviz train --model DIR`."""
    folder = tmp_path_factory.mktemp("tiny-model")
    save_model(tiny_model(0), folder, tiny_tokenizer())
    return folder


@pytest.fixture(scope="session")
def tiny_pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in tiny_pairs()), encoding="utf-8")
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: one thread each, no GPU, quiet tokenizers."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1")
    return env


def tiviz_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tiviz.cli", *args]


def fast_flags(**overrides: Any) -> list[str]:
    values = {**FAST, **overrides}
    out = []
    for k, v in values.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out
