"""Model loading: local folders as safetensors, the offline default model, saving a GGUF-loaded model."""

from __future__ import annotations

import pytest
import torch

from tiviz.errors import ModelError
from tiviz.models import load_model, reference_copy, save_model
from tiviz.testing import tiny_model, tiny_tokenizer


def test_save_and_reload_folder(tmp_path):
    model, tok = tiny_model(), tiny_tokenizer()
    save_model(model, tmp_path / "m", tokenizer=tok)
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    ids = torch.tensor([tok("hello")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, model(ids).logits, atol=1e-6)
    assert loaded.tokenizer.chat_template == tok.chat_template
    ref = reference_copy(loaded)
    assert not any(p.requires_grad for p in ref.parameters())


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="safetensors"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(str(tmp_path / "empty"), dtype="float8")


@pytest.mark.integration
def test_default_model_answers_and_saves(smol, tmp_path):
    tok, model = smol.tokenizer, smol.model
    assert smol.model_id == "smollm2-135m-instruct" and model.dtype == torch.float32
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])
    save_model(smol, tmp_path / "smol")
    again = load_model(str(tmp_path / "smol"))
    with torch.no_grad():
        a = model(enc["input_ids"]).logits
        b = again.model(enc["input_ids"]).logits
    assert torch.allclose(a, b, atol=1e-5)
