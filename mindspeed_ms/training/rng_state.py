"""Seeding and the RNG state saved in checkpoints (Python, numpy, MindSpore).

All data-parallel ranks use the same seed (as Megatron does without --data-parallel-random-init),
so rank 0's state is the state of every rank and is what a checkpoint stores."""
from __future__ import annotations

import random

import numpy as np
import mindspore as ms


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def get_rng_state() -> dict:
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python_version": int(version), "python_state": np.asarray(state, dtype=np.int64),
            "python_gauss": -1.0 if gauss is None else float(gauss),
            "numpy_keys": np.asarray(keys, dtype=np.int64), "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss), "numpy_cached_gaussian": float(cached),
            "mindspore": np.asarray(ms.get_rng_state().asnumpy() if hasattr(ms.get_rng_state(), "asnumpy")
                                    else ms.get_rng_state(), dtype=np.int64)}


def set_rng_state(state: dict):
    gauss = None if state["python_gauss"] == -1.0 else state["python_gauss"]
    random.setstate((int(state["python_version"]), tuple(int(x) for x in np.asarray(state["python_state"])), gauss))
    np.random.set_state(("MT19937", np.asarray(state["numpy_keys"], dtype=np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_cached_gaussian"])))
    ms_state = np.asarray(state["mindspore"])
    cur = ms.get_rng_state()
    ms.set_rng_state(ms.Tensor(ms_state.astype(cur.asnumpy().dtype)) if hasattr(cur, "asnumpy") else ms_state)
