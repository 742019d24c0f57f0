"""A tiny, deterministic causal LM and tokenizer built in code, for tests, app tests and benchmarks (and a free
local port for the ones that start servers or process groups).

Nothing here touches the network or the disk: the tokenizer is byte-level BPE with no merges (one token per
byte, so offsets are exact and every string is encodable), the model a two-layer Llama with random weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MODEL_ID = "tiviz-tiny-test-model"


def tiny_tokenizer(chat_template: bool = True) -> Any:
    """A byte-level tokenizer (259 ids: 3 specials + 256 bytes) with a ChatML template and fast offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        model_max_length=512,
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    if chat_template:
        tok.chat_template = TINY_CHAT_TEMPLATE
    tok.name_or_path = TINY_MODEL_ID
    return tok


def tiny_model(seed: int = 0, *, hidden_size: int = 32, num_layers: int = 2, attn: str = "eager") -> Any:
    """A randomly initialised two-layer Llama over the tiny tokenizer's vocabulary, in eval mode, float32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=259,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,  # else nn.Embedding zeroes EOS's row (id 2 pads too), a kink for gradient checks
        tie_word_embeddings=True,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_MODEL_ID
    model.eval()
    return model


def tiny_pairs() -> list[dict[str, Any]]:
    """Four short preference pairs with rationales, covering plain text, emoji and multi-byte characters."""
    return [
        {
            "id": "capital",
            "prompt": "What is the capital of France?",
            "chosen": "The capital of France is Paris.",
            "rejected": "The capital of France is Rome.",
            "rationale_chosen": ["Paris"],
            "rationale_rejected": ["Rome"],
        },
        {
            "id": "math",
            "prompt": "What is 2 + 2?",
            "chosen": "2 + 2 = 4.",
            "rejected": "2 + 2 = 5.",
            "rationale_chosen": ["4"],
            "rationale_rejected": ["5"],
        },
        {
            "id": "polite",
            "prompt": "Say hello.",
            "chosen": "Hello! Nice to meet you 😊",
            "rejected": "Go away.",
            "rationale_chosen": ["Hello"],
            "rationale_rejected": ["Go away"],
        },
        {
            "id": "cafe",
            "prompt": "Name a French drink.",
            "chosen": "Café au lait, naturally.",
            "rejected": "Coca-Cola, obviously.",
            "rationale_chosen": ["Café au lait"],
            "rationale_rejected": ["Coca-Cola"],
        },
    ]


# ---------------------------------------------------------------------------------------------- reward model


def tiny_reward_model(seed: int = 0, *, hidden_size: int = 32, num_layers: int = 2) -> Any:
    """A randomly initialised two-layer `LlamaForSequenceClassification` with one output (a reward model) over
    the tiny tokenizer's vocabulary, in eval mode, float32.

    Its pad token is `<|endoftext|>` (id 0), which the tiny tokenizer's texts never contain, so the model's own
    forward reads the score at the last token, EOS included.
    """
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=259, hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, num_labels=1, attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # a random head of std 0.02 gives scores near 0; widen it so differences show
        model.score.weight.normal_(0.0, 1.0)
    model.config.name_or_path = TINY_MODEL_ID + "-reward"
    model.eval()
    return model


def save_tiny_reward_model(folder: Any, seed: int = 0) -> Any:
    """Save `tiny_reward_model(seed)` and the tiny tokenizer to `folder` (safetensors); returns the folder Path."""
    from pathlib import Path

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    tiny_reward_model(seed).save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition",
             poll: float = 0.05) -> None:
    """Poll `cond` until it is true; AssertionError naming `what` after `timeout` seconds (for tests that wait on
    another process)."""
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a test server or a process group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def float64_copy(model: Any) -> Any:
    """A float64 deep copy of `model` whose RMSNorm layers also normalise in float64: the precision reference a
    float32 computation is held against (transformers' RMSNorm rounds its input to float32 whatever the model's
    dtype, which leaves float32 rounding in an otherwise float64 forward)."""
    import copy
    import types

    import torch

    def forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(hidden.dtype)

    out = copy.deepcopy(model).double()
    for module in out.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(forward, module)
    return out
