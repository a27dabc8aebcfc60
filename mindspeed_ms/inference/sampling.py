"""Choosing the next token from logits on the host (numpy): greedy, or sampled with temperature,
top-k and top-p (nucleus) filtering.

The filtering follows HF transformers' logits warpers (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper, applied in that order) so that a sampled run means the same thing as
`generate(do_sample=True, temperature=..., top_p=...)` there; tests compare the filtered
distributions with transformers'.
"""
from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingConfig:
    """How to pick tokens. `do_sample=False` is greedy (argmax); the other fields then do nothing."""
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(f"--temperature must be > 0 when sampling (got {self.temperature}); "
                                 f"use greedy decoding (no --do-sample) for deterministic output")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"--top-p must be in (0, 1] (got {self.top_p})")
            if self.top_k < 0:
                raise ValueError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")


def filtered_log_probs(logits, temperature=1.0, top_p=1.0, top_k=0):
    """Log-probabilities after temperature, top-k and top-p filtering; removed tokens get -inf.

    logits: [B, V] float. Returns [B, V] float64.
    """
    scores = np.asarray(logits, dtype=np.float64) / float(temperature)
    if scores.ndim != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {scores.shape}")
    if top_k and top_k < scores.shape[-1]:
        kth = np.sort(scores, axis=-1)[:, -top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    if top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as HF
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        probs = _softmax(sorted_scores)
        cum = np.cumsum(probs, axis=-1)
        remove_sorted = cum <= (1.0 - top_p)
        remove_sorted[:, -1] = False  # always keep the most likely token
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        scores = np.where(remove, -np.inf, scores)
    with np.errstate(divide="ignore"):  # filtered tokens: log(0) = -inf on purpose
        return np.log(_softmax(scores))


def _softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=-1, keepdims=True)


class TokenChooser:
    """Stateful next-token choice: one seeded generator per run, so sampled runs are reproducible."""

    def __init__(self, config: SamplingConfig):
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def __call__(self, logits):
        """logits [B, V] -> next token ids [B] int64."""
        logits = np.asarray(logits)
        if not self.config.do_sample:
            return np.argmax(logits, axis=-1).astype(np.int64)
        c = self.config
        probs = np.exp(filtered_log_probs(logits, c.temperature, c.top_p, c.top_k))
        # inverse-CDF sampling with one uniform draw per row; u in (0, 1] so a token of
        # probability 0 (filtered out) can never be chosen
        u = 1.0 - self._rng.random(probs.shape[0])
        cum = np.cumsum(probs, axis=-1)
        idx = (cum < (u * cum[:, -1])[:, None]).sum(axis=-1)
        return np.minimum(idx, probs.shape[-1] - 1).astype(np.int64)


def repetition_penalized(scores, penalty):
    """transformers' repetition penalty on the scores of already seen tokens: negative scores
    are multiplied by `penalty`, the others divided (both readers of generation settings use it)."""
    return np.where(scores < 0, scores * penalty, scores / penalty)
