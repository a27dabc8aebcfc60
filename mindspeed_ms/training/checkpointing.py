"""Training checkpoints in the MindSpeed-MM layout, through mindspeed_ms.checkpoint's rank-file code.

    <save>/latest_checkpointed_iteration.txt          "5" (or "release" for converted checkpoints)
    <save>/iter_0000005/mp_rank_00/model_optim_rng.pt  (or model_optim_rng.safetensors)

The rank file holds Megatron's keys: `model` (MM parameter names), `checkpoint_version` 3.0,
`iteration`, and unless --no-save-optim / --no-save-rng: `optimizer` (AdamW step and moments by
parameter name), `opt_param_scheduler`, `rng_state`, plus `data_sampler` (sampler position).

Atomicity comes from `checkpoint.layout.AtomicTagDir`: the iteration directory is written under a
hidden temporary name and renamed into place, then latest_checkpointed_iteration.txt is replaced;
a process killed at any moment leaves `latest` pointing at a complete checkpoint.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, Optional

import numpy as np

from mindspeed_ms.checkpoint.layout import LayoutDirError
from mindspeed_ms.checkpoint.mm_io import read_mm_checkpoint, write_mm_checkpoint
from mindspeed_ms.checkpoint.pp_split import ParallelLayout


class CheckpointLoadError(ValueError):
    pass


def _single_rank_layout(model: Dict[str, np.ndarray]) -> ParallelLayout:
    """tp 1 / pp 1 layout with the layer counts found in the parameter names."""
    def count(prefix):
        nums = {int(n[len(prefix):].split(".", 1)[0]) for n in model if n.startswith(prefix)}
        return max(nums) + 1 if nums else 0
    from mindspeed_ms.checkpoint.pp_split import LLM_LAYERS, VIT_LAYERS
    return ParallelLayout.build(1, [[count(LLM_LAYERS)]], [[count(VIT_LAYERS)]])


def _remove_leftovers(root: str):
    """Temporary directories of a run killed while saving (never referenced by `latest`). Skipped while
    another live run holds the --save lock: they may be that run's save in progress."""
    from mindspeed_ms.training.save_lock import held_by_other
    if not os.path.isdir(root) or held_by_other(root):
        return
    for name in os.listdir(root):
        if name.startswith((".tmp-iter_", ".old-iter_")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def save_checkpoint(root: str, iteration: int, model: Dict[str, np.ndarray], fmt: str = "torch",
                    optimizer: Optional[Dict] = None, scheduler: Optional[Dict] = None,
                    rng_state: Optional[Dict] = None, sampler: Optional[Dict] = None,
                    args: Optional[Dict] = None) -> str:
    """Write iteration `iteration` under `root` atomically; returns the iteration directory."""
    if fmt not in ("torch", "safetensors"):
        raise ValueError(f"--ckpt-format {fmt!r}: use torch or safetensors")
    _remove_leftovers(root)
    extra = {"iteration": int(iteration)}
    for key, value in (("optimizer", optimizer), ("opt_param_scheduler", scheduler), ("rng_state", rng_state),
                       ("data_sampler", sampler), ("args", args)):
        if value is not None:
            extra[key] = value
    return write_mm_checkpoint(root, int(iteration), model, _single_rank_layout(model),
                               fmt="pt" if fmt == "torch" else "safetensors", extra_per_rank={(0, 0): extra})


def load_checkpoint(root: str) -> Dict:
    """Read the checkpoint `latest_checkpointed_iteration.txt` points at (any TP/PP layout is merged).

    Returns `model` (name -> numpy), `iteration` (0 for release), `release`, `path`, and when
    present `optimizer`, `opt_param_scheduler`, `rng_state`, `data_sampler`."""
    try:
        model, reader = read_mm_checkpoint(root)
    except (LayoutDirError, ValueError, OSError) as e:
        raise CheckpointLoadError(str(e)) from None
    extras = dict(reader.extras.get((0, 0), {}))
    out = {k: v for k, v in extras.items() if k in ("optimizer", "opt_param_scheduler", "rng_state",
                                                    "data_sampler", "args")}
    if (reader.layout.tp > 1 or reader.layout.pp > 1) and "optimizer" in out:
        del out["optimizer"]     # per-rank optimizer shards of a sharded run do not fit one process
    out["model"] = model
    out["release"] = reader.tag == "release"
    out["iteration"] = 0 if out["release"] else int(extras.get("iteration", reader.tag))
    out["path"] = reader.dir
    return out
