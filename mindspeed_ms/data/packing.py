"""Sequence packing: several preprocessed samples in one row of up to --seq-length tokens.

Switched on by data.json: `dataset_param.attr.packing: true` (MindSpeed-MM 26.0.0's switch for
supervised data) or `basic_parameters.packing` / `neat_packing` (LLaMA-Factory's; `neat_packing`
implies packing). Two kinds, as in both references:
- `neat_packing: true` ("neat"): every sample attends only to itself (block-diagonal causal mask),
  its M-RoPE positions restart at 0, and the loss of each loss mode is normalised over the original
  samples exactly as without packing (tested: same loss and gradients as the unpacked batch);
- `packing: true` alone ("cross"): the row is one sequence, as MindSpeed-MM and LLaMA-Factory
  train it (later samples attend to earlier ones, positions run on through the row).

The packs are fixed once, before training: first-fit-decreasing over the preprocessed lengths
(`MultimodalDataset.lengths()`, vision tokens included), samples sorted longest first with ties in
index order, so the packing is a pure function of the dataset and --seq-length. A pack is then
one "sample" for the sampler (MindSpeed-MM's packed rows are the dataset's items too): the
seeded shuffle, the length samplers, the micro-batch partition and the resume position all work
on packs unchanged. (MindSpeed-MM packs greedily within each preprocessing batch of 1000 records;
packing over the whole set fills rows at least as well.)
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

PACKING_KINDS = ("neat", "cross")


def packing_kind(cfg) -> Optional[str]:
    """"neat", "cross" or None for a DataConfig (see the module docstring)."""
    b = cfg.basic_parameters
    if b.neat_packing:
        return "neat"
    if b.packing or getattr(cfg.attr, "packing", False):
        return "cross"
    return None


def first_fit_decreasing(lengths, capacity: int) -> List[np.ndarray]:
    """Bins of sample indices, each summing to <= `capacity`: items longest first (ties by index)
    go into the first bin with room. A segment tree over the bins' free space finds that bin in
    O(log bins), so a million samples pack in seconds. Bins come out in creation order, each
    holding its indices in insertion order (longest first)."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    capacity = int(capacity)
    if capacity <= 0:
        raise ValueError(f"packing capacity must be positive, got {capacity}")
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 0):
        bad = int(np.argmax(lengths > capacity)) if lengths.max() > capacity else int(np.argmin(lengths))
        raise ValueError(f"sample {bad} has {int(lengths[bad])} tokens, outside 0..{capacity} (--seq-length)")
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    size = 1
    while size < max(len(lengths), 1):
        size *= 2
    free = np.full(2 * size, -1, dtype=np.int64)     # leaves: free space of bin k (-1: bin not opened)
    bins: List[List[int]] = []
    for i in order.tolist():
        need = int(lengths[i])
        if free[1] >= need:
            node = 1
            while node < size:                        # leftmost leaf with enough room
                node = 2 * node if free[2 * node] >= need else 2 * node + 1
            k = node - size
        else:
            k = len(bins)
            bins.append([])
            node = k + size
            free[node] = capacity
        bins[k].append(i)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return [np.asarray(b, dtype=np.int64) for b in bins]


class PackedDataset:
    """A map-style dataset whose item j is the list of samples of pack j (what the packing
    collator takes). `lengths()` gives each pack's token count, for the length samplers."""

    def __init__(self, dataset, capacity: int, lengths=None):
        self.dataset, self.capacity = dataset, int(capacity)
        sample_lengths = np.asarray(dataset.lengths() if lengths is None else lengths, dtype=np.int64)
        self.packs = first_fit_decreasing(sample_lengths, self.capacity)
        self._lengths = np.array([int(sample_lengths[p].sum()) for p in self.packs], dtype=np.int64)
        self.num_samples = len(sample_lengths)

    def __len__(self):
        return len(self.packs)

    def __getitem__(self, j):
        return [self.dataset[int(i)] for i in self.packs[int(j)]]

    def lengths(self):
        return self._lengths

    def fill(self) -> float:
        """Fraction of the packed rows' tokens that are real (1 - padding to --seq-length)."""
        return float(self._lengths.sum()) / max(len(self.packs) * self.capacity, 1)
