"""Helpers for reading what an AppTest rendered (imported by the app tests)."""

from __future__ import annotations

import html
import json
import re

FALLBACK_METHOD = "gradient"  # what the method pickers open on without a quality ranking (conftest ships none)
HOSTILE_PROMPT = "Say <script>alert('p')</script> please"
HOSTILE_CHOSEN = "Sure: <img src=x onerror=alert('c')> **bold** [link](javascript:alert(1))"
HOSTILE_REJECTED = "</div><script>alert('r')</script>"


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def html_bodies(at) -> list[str]:
    return [h.proto.body for h in at.html]


def plotly_specs(at) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def plotly_array(value):
    """A plotly JSON array as a numpy array (plotly 6+ writes numeric arrays as base64 typed arrays)."""
    import base64

    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            arr = arr.reshape([int(s) for s in str(shape).split(",")])
        return arr
    return np.asarray(value)


def token_blocks(at) -> dict[tuple[str, str], str]:
    """(side, method) -> the text shown in that shaded block (spans' text, EOS piece left out)."""
    out = {}
    for body in html_bodies(at):
        m = re.search(r'<div class="tiviz-title">(\w+) response · ([\w_]+)', body)
        if not m:
            continue
        inner = re.findall(r'<span class="(tok[^"]*)" style="[^"]*" data-tip="[^"]*">([^<]*)</span>', body)
        out[(m.group(1).lower(), m.group(2))] = "".join(html.unescape(t) for c, t in inner if "special" not in c)
    return out


def hand_logps(model, tokenizer, pair) -> tuple[float, float]:
    """log pi(chosen | x) and log pi(rejected | x) computed by hand, one unpadded sequence at a time: the sum over
    the response tokens of the log-softmax, at the position before each token, of that token's logit. Independent
    of tiviz's scoring code (only the tokenisation is tiviz's)."""
    import torch

    from tiviz.tokenization import encode_pair

    out = []
    for seq in encode_pair(tokenizer, pair):
        ids = torch.tensor([list(seq.input_ids)])  # (1, L)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (L, V)
        out.append(sum(float(logp[t - 1, ids[0, t]]) for t in range(seq.response_start, ids.shape[1])))
    return out[0], out[1]
