"""Shared fixtures: the tiny deterministic model for unit tests, the real default model for integration tests."""

from __future__ import annotations

import os

import pytest

from tiviz.data import load_pairs
from tiviz.testing import tiny_model, tiny_pairs, tiny_tokenizer


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """One torch thread for the tiny model (its ops are too small to gain from a second thread, which only competes
    for a shared CPU), every core for the real default model."""
    import torch

    torch.set_num_threads((os.cpu_count() or 1) if "smol" in request.fixturenames else 1)


@pytest.fixture(autouse=True, scope="module")
def _fresh_accelerate_state():
    """accelerate keeps its state in process-wide singletons: a TRL trainer (bf16 by default) would leave its mixed
    precision to every later `Accelerator()` in the session, which then refuses other settings. Each test module
    starts clean (per module, not per test: a module-scoped trainer fixture needs the state it was built with)."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def model():
    return tiny_model(seed=0)


@pytest.fixture()
def pairs():
    return load_pairs(tiny_pairs())


@pytest.fixture(scope="session")
def smol():
    """The real offline default model (SmolLM2-135M-Instruct), loaded once per session."""
    from tiviz.models import load_model

    return load_model()
