"""Tensor-parallel split and merge of MM (Megatron-named) Qwen2-VL tensors.

* row (dim 0, contiguous): vocab of `word_embeddings` / `output_layer`; LLM `linear_qkv` weight and
  bias (whole KV groups per rank, since groups are interleaved); ViT `linear_qkv` (whole heads);
  ViT and projector `linear_fc1` weight and bias.
* col (dim 1): `linear_proj` and `linear_fc2` weights (LLM, ViT, projector).
* glu (LLM `linear_fc1`): gate and up split separately, rank r holds concat(gate[r], up[r]).
* everything else (norms, row-parallel biases, patch_embed) is replicated.
* a family may split differently (Qwen2.5-VL: the ViT `linear_fc1` weight and bias are glu): the
  functions take the family's rules (`CheckpointScheme.tp_rules`), by default Qwen2-VL's.
* LoRA adapters (`<module>.lora_A.default.weight` [r, in], `<module>.lora_B.default.weight` [out, r])
  follow their base weight `<module>.weight` so that B_r @ A_r is rank r's part of B @ A: over a
  row-split base (column-parallel linear) B is split like the base (row / glu) and A is replicated;
  over a col-split base (row-parallel linear) A's columns are split and B is replicated.
"""
import re

import numpy as np

ROW, COL, GLU, REPLICATED = "row", "col", "glu", "replicated"

QWEN2VL_TP_RULES = [
    (r"text_decoder\.embedding\.word_embeddings\.weight", ROW),
    (r"text_decoder\.output_layer\.weight", ROW),
    (r"text_decoder\.decoder\.layers\.\d+\.self_attention\.linear_qkv\.(weight|bias)", ROW),
    (r"text_decoder\.decoder\.layers\.\d+\.self_attention\.linear_proj\.weight", COL),
    (r"text_decoder\.decoder\.layers\.\d+\.mlp\.linear_fc1\.weight", GLU),
    (r"text_decoder\.decoder\.layers\.\d+\.mlp\.linear_fc2\.weight", COL),
    (r"image_encoder\.encoder\.blocks\.layers\.\d+\.self_attention\.linear_qkv\.(weight|bias)", ROW),
    (r"image_encoder\.encoder\.blocks\.layers\.\d+\.self_attention\.linear_proj\.weight", COL),
    (r"image_encoder\.encoder\.blocks\.layers\.\d+\.mlp\.linear_fc1\.(weight|bias)", ROW),
    (r"image_encoder\.encoder\.blocks\.layers\.\d+\.mlp\.linear_fc2\.weight", COL),
    (r"image_encoder\.projector\.encoder\.linear_fc1\.(weight|bias)", ROW),
    (r"image_encoder\.projector\.encoder\.linear_fc2\.weight", COL),
]
_COMPILED = {}


def _compiled(rules):
    rules = tuple(QWEN2VL_TP_RULES if rules is None else rules)
    if rules not in _COMPILED:
        _COMPILED[rules] = [(re.compile(p + r"\Z"), kind) for p, kind in rules]
    return _COMPILED[rules]


class TPSplitError(ValueError):
    pass


_LORA_A, _LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"


def tp_kind(name: str, rules=None) -> str:
    """How tensor `name` (MM name, global or local layer number) is split across TP ranks."""
    if name.endswith(_LORA_A):
        return COL if tp_kind(name[:-len(_LORA_A)] + ".weight", rules) == COL else REPLICATED
    if name.endswith(_LORA_B):
        base = tp_kind(name[:-len(_LORA_B)] + ".weight", rules)
        return base if base in (ROW, GLU) else REPLICATED
    for rx, kind in _compiled(rules):
        if rx.match(name):
            return kind
    return REPLICATED


def _axis_and_size(name, shape, tp, rules=None):
    kind = tp_kind(name, rules)
    if kind == REPLICATED or tp == 1:
        return kind, None
    axis = 1 if kind == COL else 0
    if len(shape) <= axis:
        raise TPSplitError(f"{name} has shape {tuple(shape)}: no dim {axis} to split for tp")
    div = 2 * tp if kind == GLU else tp
    if shape[axis] % div:
        what = "gate/up rows" if kind == GLU else f"dim {axis}"
        raise TPSplitError(f"tp_size {tp} does not divide {what} of {name} (shape {tuple(shape)})")
    return kind, axis


def tp_shape(name: str, shape, tp: int, rules=None) -> tuple:
    """Shape of one TP rank's part of a tensor of `shape`."""
    kind, axis = _axis_and_size(name, shape, tp, rules)
    if axis is None:
        return tuple(shape)
    out = list(shape)
    out[axis] //= tp
    return tuple(out)


def split_tp(name: str, arr: np.ndarray, tp: int, rank: int, rules=None) -> np.ndarray:
    """TP rank `rank`'s part of `arr` (a view where the split is a slice; GLU needs a copy)."""
    kind, axis = _axis_and_size(name, arr.shape, tp, rules)
    if axis is None:
        return arr
    if kind == GLU:
        half = arr.shape[0] // 2
        n = half // tp
        return np.concatenate([arr[rank * n:(rank + 1) * n], arr[half + rank * n:half + (rank + 1) * n]], axis=0)
    n = arr.shape[axis] // tp
    return arr[rank * n:(rank + 1) * n] if axis == 0 else arr[:, rank * n:(rank + 1) * n]


def merge_tp(name: str, parts, rules=None) -> np.ndarray:
    """Inverse of `split_tp` over all ranks' parts (in rank order)."""
    parts = list(parts)
    kind = tp_kind(name, rules)
    if len(parts) == 1 or kind == REPLICATED:
        return parts[0]
    if kind == GLU:
        halves = [p.shape[0] // 2 for p in parts]
        return np.concatenate([p[:h] for p, h in zip(parts, halves)] + [p[h:] for p, h in zip(parts, halves)], axis=0)
    return np.concatenate(parts, axis=1 if kind == COL else 0)
