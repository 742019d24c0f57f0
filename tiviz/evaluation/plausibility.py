"""Plausibility: do a method's most important tokens fall on the annotated rationale?

A response token is positive when its character span overlaps an occurrence of one of the pair's rationale
substrings. Scores: token-level average precision (AUPRC) and hit@k, each with its exact expectation under a
uniformly random ranking of the same tokens (docs/EVALUATION.md gives the definitions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def rationale_spans(text: str, rationales: Iterable[str]) -> list[tuple[int, int]]:
    """Every occurrence [start, end) of every rationale substring in the text (overlapping ones included)."""
    spans = []
    for r in rationales:
        if not r:
            continue
        i = text.find(r)
        while i >= 0:
            spans.append((i, i + len(r)))
            i = text.find(r, i + 1)
    return spans


def rationale_labels(char_spans: Sequence[tuple[int, int]] | np.ndarray, text: str,
                     rationales: Iterable[str]) -> np.ndarray:
    """(n,) bool: token i is positive if its span [a, b), a < b, overlaps an occurrence [s, e): a < e and s < b.

    Args:
        char_spans: (n, 2) response-token character spans into `text` (the table's char_start, char_end).
        text: the response text.
        rationales: the annotated substrings of `text`.
    """
    return span_labels(char_spans, rationale_spans(text, rationales))


def span_labels(char_spans: Sequence[tuple[int, int]] | np.ndarray,
                spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """(n,) bool: token i is positive if its span [a, b), a < b, overlaps one of `spans` [s, e): a < e and s < b.

    Args:
        char_spans: (n, 2) token character spans (the table's char_start, char_end).
        spans: the marked character ranges of the same text (e.g. a planted cue's known offsets).
    """
    tokens = np.asarray(char_spans, dtype=np.int64).reshape(-1, 2)
    labels = np.zeros(len(tokens), dtype=bool)
    for s, e in spans:
        labels |= (tokens[:, 0] < tokens[:, 1]) & (tokens[:, 0] < e) & (s < tokens[:, 1])
    return labels


def _sorted(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores descending (NaN last, as -inf) with their labels."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(-s, kind="stable")
    return s[order], np.asarray(labels, dtype=bool)[order]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision `sum_j (R_j - R_{j-1}) P_j` over the distinct score thresholds, highest first.

    At each threshold every token scoring at least it is predicted positive, so tied tokens enter together (the
    scikit-learn definition). Without ties this is the mean, over positives, of the precision at the positive's
    rank. NaN scores rank last. Returns NaN when there is no positive.
    """
    s, y = _sorted(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    last_of_group = np.r_[s[1:] != s[:-1], True]  # (n,) True at the end of each tie group
    tp = np.cumsum(y)[last_of_group]  # true positives at each threshold
    pp = (np.flatnonzero(last_of_group) + 1).astype(np.float64)  # predicted positives at each threshold
    recall = tp / n_pos
    precision = tp / pp
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_random_ap(n: int, n_pos: int) -> float:
    """Exact expected average precision of a uniformly random ranking of n tokens, n_pos of them positive.

    A positive at rank r (uniform on 1..n) has precision (1 + X) / r with E[X] = (n_pos - 1)(r - 1)/(n - 1)
    positives above it, so `E[AP] = H_n / n + (n_pos - 1)(n - H_n) / (n (n - 1))`, H_n the n-th harmonic
    number. It tends to the positive rate n_pos / n for long sequences and exceeds it for short ones.
    """
    if n_pos <= 0 or n <= 0:
        return float("nan")
    if n == 1:
        return 1.0
    h = float(np.sum(1.0 / np.arange(1, n + 1)))
    return h / n + (n_pos - 1) * (n - h) / (n * (n - 1))


def hit_at_k(scores: np.ndarray, labels: np.ndarray, k: int | None = None) -> float:
    """Share of the k top-scored tokens that are positive; k defaults to the number of positives.

    Tokens tied at the cut-off share the remaining slots: each counts with weight (slots left / tie-group size),
    which is the expectation over the orders of the tie. NaN scores rank last. NaN when there is no positive.
    """
    s, y = _sorted(scores, labels)
    n_pos = int(y.sum())
    if k is None:
        k = n_pos
    if k <= 0 or len(s) == 0:
        return float("nan")
    k = min(k, len(s))
    cut = s[k - 1]
    above = s > cut
    tie = s == cut
    slots = k - int(above.sum())
    hits = float(y[above].sum()) + slots * float(y[tie].sum()) / float(tie.sum())
    return hits / k


def expected_random_hit(n: int, n_pos: int, k: int | None = None) -> float:
    """Expected hit@k of a uniformly random ranking: n_pos / n whatever k (hypergeometric mean / k)."""
    if n <= 0 or n_pos <= 0:
        return float("nan")
    return n_pos / n
