"""Padding a step with empty micro-batches (pipeline layouts with fewer micro-batches than stages).

MindSpore's `Pipeline` needs at least as many micro-batches per step as pipeline stages; Megatron
runs fewer (MindSpeed-MM's 7B system test: TP1 PP4, global batch 4 on 8 devices = 2 per step). The
step is therefore filled up with empty micro-batches: copies of a real one (valid shapes, vision
offsets and masks) whose loss weights are all 0. The model's loss is sum(ce * loss_weights) and the
micro-batch wrappers sum the micro-batch losses, so an empty micro-batch adds exactly 0 to the loss
and 0 * d(ce) = 0 to every gradient: loss, gradients and update are those of the real micro-batches.
The loss weights must be computed (normalised) over the real micro-batches before padding.
"""
from typing import Dict, List

import numpy as np


def empty_like(micro_batch: Dict) -> Dict:
    """A micro-batch with `micro_batch`'s inputs and no loss weight."""
    out = dict(micro_batch)
    out["loss_weights"] = np.zeros_like(np.asarray(micro_batch["loss_weights"]))
    return out


def pad_with_empty(micro_batches: List[Dict], total: int) -> List[Dict]:
    """`micro_batches` followed by empty copies of the last one, `total` in all."""
    if total <= len(micro_batches):
        return list(micro_batches)
    if "loss_weights" not in micro_batches[-1]:
        raise ValueError("pad_with_empty: compute the loss weights of the real micro-batches first")
    return list(micro_batches) + [empty_like(micro_batches[-1]) for _ in range(total - len(micro_batches))]
