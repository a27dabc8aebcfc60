"""The three loss modes of MindSpeed-MM, expressed as per-token weights (`loss_weights`).

The model computes `sum(ce_token * loss_weights)`; every normalisation lives in the weights, so
one compiled graph serves all modes and gradient accumulation and data parallelism reduce to
*summing* gradients over micro-batches and ranks:

- default: token mean within each micro-batch, averaged over the accumulation steps and DP ranks
  -> weight = 1 / (valid tokens of the micro-batch x micro-batches per step x DP)
- per sample (`--calculate-per-sample-loss`): token mean per sample, mean over the global batch's
  samples -> weight = 1 / (valid tokens of the sample x global batch size)
- per token (`--calculate-per-token-loss`): sum over the global batch / its valid-token count
  -> weight = 1 / (valid tokens of the whole global batch, all ranks)

Alignment (docs/architecture.md): `loss_weights[b, s]` weighs the prediction made at position s,
i.e. of `labels[b, s+1]`, so the last column is always 0.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

MODES = ("default", "per_sample", "per_token")


def valid_label_mask(labels: np.ndarray) -> np.ndarray:
    """[B, S] bool: position s predicts a real label (labels[:, s+1] != -100)."""
    mask = np.zeros(labels.shape, dtype=bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def count_valid_tokens(labels: np.ndarray) -> int:
    return int(valid_label_mask(labels).sum())


def count_samples(segments: np.ndarray) -> int:
    """Samples in packed rows (`segments` 1..k per row, 0 padding): the per_sample mode's count."""
    segments = np.asarray(segments)
    return int(segments.max(axis=1, initial=0).sum()) if segments.size else 0


def make_loss_weights(labels: np.ndarray, mode: str, num_micro_batches: int, dp_size: int,
                      global_batch_size: Optional[int] = None,
                      global_valid_tokens: Optional[int] = None,
                      segments: Optional[np.ndarray] = None) -> np.ndarray:
    """Weights for one micro-batch of one rank. `global_batch_size` is needed for per_sample,
    `global_valid_tokens` (summed over all micro-batches and DP ranks of the step) for per_token.
    A micro-batch (or sample) without any label token gets zero weight rather than a 0/0.

    `segments` [B, S] (packed rows, `data.packing`: 1..k for the samples of a row, 0 padding): a
    sample is a segment, not a row, so per_sample takes each packed sample's token mean; with
    packing `global_batch_size` must then count the samples of the global batch, not the rows
    (`count_samples`). default and per_token are token means and need no segments."""
    if mode not in MODES:
        raise ValueError(f"loss mode {mode!r}: use one of {MODES}")
    valid = valid_label_mask(np.asarray(labels))
    w = np.zeros(valid.shape, dtype=np.float64)
    if mode == "default":
        n = valid.sum()
        if n:
            w[valid] = 1.0 / (float(n) * num_micro_batches * dp_size)
    elif mode == "per_sample":
        if global_batch_size is None:
            raise ValueError("per-sample loss weights need the global batch size")
        if segments is None:
            per_sample = valid.sum(axis=1)
            for b in np.nonzero(per_sample)[0]:
                w[b, valid[b]] = 1.0 / (float(per_sample[b]) * global_batch_size)
        else:
            # position s predicts labels[s+1]; the sample it belongs to is segments[s] (the packing
            # collator drops every sample's first label, so s and s+1 are in the same sample)
            segments = np.asarray(segments)
            key = np.arange(valid.shape[0])[:, None] * (int(segments.max(initial=0)) + 1) + segments
            _, inverse, counts = np.unique(key[valid], return_inverse=True, return_counts=True)
            w[valid] = 1.0 / (counts[inverse].astype(np.float64) * global_batch_size)
    else:
        if global_valid_tokens is None:
            raise ValueError("per-token loss weights need the global valid-token count")
        if global_valid_tokens:
            w[valid] = 1.0 / float(global_valid_tokens)
    return w.astype(np.float32)


def loss_rows(loss_weights: np.ndarray, multiple: int = 128) -> np.ndarray:
    """int32 flat indices (into B*S) of the positions whose loss weight is non-zero, padded to a
    multiple of `multiple` with the last position B*S-1 (its weight is always 0: the last column
    predicts nothing). The model then runs the output layer and the cross entropy on these rows
    only, the positions without a label (prompt, image tokens, padding) cost nothing there.

    Why 128: the loss runs in 4 chunks, and with fewer than ~16 rows per chunk MindSpore's CPU
    softmax splits the vocabulary axis over threads with a split it tunes during the first launches,
    which made the same batch's loss differ in the 7th digit from one call to the next (measured);
    32+ rows per chunk are split by rows, and the loss is bit-for-bit reproducible."""
    flat = np.asarray(loss_weights).reshape(-1)
    rows = np.flatnonzero(flat != 0)
    size = -(-max(len(rows), 1) // multiple) * multiple       # at least one full multiple
    return np.concatenate([rows, np.full(size - len(rows), flat.size - 1)]).astype(np.int32)
