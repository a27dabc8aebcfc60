"""Fold LoRA adapters into the base weights: W' = W + (alpha / r) * B @ A.

`merge_lora_state_dict` works on whole (tp1) tensors and on one TP rank's shards alike, because the
adapters are split consistently with their base weight (checkpoint/tp_split.py): for a
column-parallel base (rows split: `linear_qkv`, ViT / projector `linear_fc1`, the gate/up halves of
the LLM's `linear_fc1`) B's rows are split the same way and A is whole, so B_r @ A is exactly rank
r's rows of B @ A; for a row-parallel base (columns split: `linear_proj`, `linear_fc2`) A's
columns are split and B is whole, so B @ A_r is rank r's columns.

`merge_lora_checkpoint` reads a base checkpoint and a LoRA checkpoint (any TP/PP layouts) and
writes a `release` checkpoint in the base's layout: each mp_rank file holds its base slice plus its
slice of the update -- a plain MindSpeed-MM checkpoint that `mm-convert mm_to_hf` converts.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

LORA_A, LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"


class LoRAMergeError(ValueError):
    pass


def is_lora_name(name: str) -> bool:
    return name.endswith((LORA_A, LORA_B))


def adapter_pairs(lora_sd) -> Dict[str, Tuple[str, str]]:
    """{base weight name: (A name, B name)} for every adapter of a state dict (names may be local)."""
    names = list(lora_sd.keys())
    pairs = {}
    for n in names:
        if n.endswith(LORA_A):
            module = n[:-len(LORA_A)]
            b = module + LORA_B
            if b not in names:
                raise LoRAMergeError(f"adapter {n} has no matching {b}")
            pairs[module + ".weight"] = (n, b)
        elif n.endswith(LORA_B) and n[:-len(LORA_B)] + LORA_A not in names:
            raise LoRAMergeError(f"adapter {n} has no matching {n[:-len(LORA_B)] + LORA_A}")
    return pairs


def lora_delta(a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """(alpha / r) * B @ A in float64 (the merged weight is rounded once, to the base dtype)."""
    return (b.astype(np.float64) @ a.astype(np.float64)) * float(scaling)


def merged_weight(w: np.ndarray, a: np.ndarray, b: np.ndarray, scaling: float, name: str = "") -> np.ndarray:
    if w.shape != (b.shape[0], a.shape[1]) or a.shape[0] != b.shape[1]:
        raise LoRAMergeError(f"{name}: base weight {w.shape} does not fit the adapter (A {a.shape}, B {b.shape}); "
                             f"the LoRA checkpoint was trained on another model or split differently")
    out = w.astype(np.float64) + lora_delta(a, b, scaling)
    return out.astype(w.dtype)


def merge_lora_state_dict(base_sd: Dict[str, np.ndarray], lora_sd: Dict[str, np.ndarray],
                          scaling: float) -> Dict[str, np.ndarray]:
    """The base state dict with every adapter of `lora_sd` folded in (new dict; inputs unchanged)."""
    out = {k: v for k, v in base_sd.items() if not is_lora_name(k)}
    for wname, (an, bn) in adapter_pairs(lora_sd).items():
        if wname not in out:
            raise LoRAMergeError(f"the LoRA checkpoint has an adapter for {wname}, which the base checkpoint lacks")
        out[wname] = merged_weight(np.asarray(out[wname]), np.asarray(lora_sd[an]), np.asarray(lora_sd[bn]),
                                   scaling, wname)
    return out


class _MergedView:
    """Lazy mapping for write_mm_checkpoint: one merged tensor at a time."""

    def __init__(self, base, lora, pairs, scaling):
        self.base, self.lora, self.pairs, self.scaling = base, lora, pairs, scaling

    def keys(self):
        return self.base.keys()

    def get(self, name):
        w = self.base.get(name)
        if name in self.pairs:
            an, bn = self.pairs[name]
            w = merged_weight(w, self.lora.get(an), self.lora.get(bn), self.scaling, name)
        return w


def lora_scaling_of(lora_dir: str, r: Optional[int] = None, alpha: Optional[float] = None) -> Tuple[int, float]:
    """(r, alpha): the flags when given, else what the LoRA checkpoint recorded when it was saved."""
    from mindspeed_ms.checkpoint.mm_io import MMCheckpointReader
    saved = MMCheckpointReader(lora_dir).extras.get((0, 0), {}).get("args", {}) or {}
    r = r if r is not None else saved.get("lora_r")
    alpha = alpha if alpha is not None else saved.get("lora_alpha")
    if r is None or alpha is None:
        raise LoRAMergeError(f"{lora_dir} does not record lora_r / lora_alpha: pass --lora-r and --lora-alpha "
                             f"(the values the adapters were trained with)")
    return int(r), float(alpha)


def merge_lora_checkpoint(base_dir: str, lora_dir: str, out_dir: str, r: Optional[int] = None,
                          alpha: Optional[float] = None, fmt: Optional[str] = None) -> str:
    """Write `out_dir/release/...` = base + adapters, in the base checkpoint's TP/PP layout and format."""
    from mindspeed_ms.checkpoint.layout import LayoutDirError
    from mindspeed_ms.checkpoint.mm_io import MMCheckpointReader, write_mm_checkpoint
    for flag, d in (("--base-save-dir", base_dir), ("--lora-save-dir", lora_dir)):
        if not os.path.isfile(os.path.join(str(d), "latest_checkpointed_iteration.txt")):
            raise LoRAMergeError(f"{flag} {d}: no checkpoint there (latest_checkpointed_iteration.txt is missing)")
    if os.path.abspath(out_dir) in (os.path.abspath(base_dir), os.path.abspath(lora_dir)):
        raise LoRAMergeError(f"--merge-save-dir {out_dir} must differ from the base and LoRA directories")
    try:
        base = MMCheckpointReader(base_dir)
        lora = MMCheckpointReader(lora_dir)
    except LayoutDirError as e:
        raise LoRAMergeError(str(e)) from None
    pairs = adapter_pairs(lora)
    if not pairs:
        raise LoRAMergeError(f"--lora-save-dir {lora_dir} holds no LoRA adapters (no *.lora_A.default.weight)")
    base_keys = set(base.keys())
    if any(is_lora_name(k) for k in base_keys):
        raise LoRAMergeError(f"--base-save-dir {base_dir} holds LoRA adapters itself: give the base model's checkpoint")
    missing = [w for w in pairs if w not in base_keys]
    if missing:
        raise LoRAMergeError(f"the LoRA checkpoint has adapters for {len(missing)} weights the base checkpoint lacks "
                             f"(first: {missing[0]}); is --base-save-dir the model the adapters were trained on?")
    r, alpha = lora_scaling_of(lora_dir, r, alpha)
    for w, (an, _) in pairs.items():
        if lora.shape(an)[0] != r:
            raise LoRAMergeError(f"{an} has rank {lora.shape(an)[0]} but lora_r is {r}")
    out_fmt = fmt or base.fmt
    return write_mm_checkpoint(out_dir, "release", _MergedView(base, lora, pairs, alpha / r), base.layout,
                               fmt=out_fmt)
