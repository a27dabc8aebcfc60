"""Per-rank parameter shapes implied by a shard plan, named as in the mm-convert rank files.

A parameter's slice on tensor-parallel rank r is what the plan's weight strategy gives (dim d cut
into split[d] contiguous pieces); its pipeline stage is the stage of the Cell that owns it, and its
layer number is renumbered from 0 within each (stage, chunk) as mm-convert does.
"""
import re
from typing import Dict, Tuple

import numpy as np

from mindspeed_ms.config.param_shapes import TEXT_PREFIX, mm_param_shapes
from mindspeed_ms.parallel.shard_plan import ShardPlan

_LAYER = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


def param_owner(plan: ShardPlan) -> Dict[str, Tuple[int, int]]:
    """parameter name -> (stage, chunk), from the longest Cell path of the plan that prefixes it."""
    cells = sorted(plan.cells, key=lambda c: -len(c.cell))
    owner = {}
    shapes = full_param_shapes(plan)
    for name in shapes:
        for c in cells:
            if name.startswith(c.cell + "."):
                owner[name] = (c.stage, c.chunk)
                break
    return owner


def full_param_shapes(plan: ShardPlan) -> Dict[str, Tuple[int, ...]]:
    """tp1/pp1 MM parameter shapes, plus the output_layer copy mm-convert writes for tied
    embeddings when the output layer sits on another stage than the embedding, plus the LoRA
    adapters of the plan (A [r, in], B [out, r] beside their base weight [out, in])."""
    shapes = dict(mm_param_shapes(plan.model_cfg))
    out = f"{TEXT_PREFIX}.output_layer.weight"
    if out not in shapes and out in plan.param_strategies():
        shapes[out] = shapes[f"{TEXT_PREFIX}.embedding.word_embeddings.weight"]
    for module in plan.lora_modules:
        n_out, n_in = shapes[f"{module}.weight"]
        shapes[f"{module}.lora_A.default.weight"] = (plan.lora.r, n_in)
        shapes[f"{module}.lora_B.default.weight"] = (n_out, plan.lora.r)
    return shapes


def rank_param_shapes(plan: ShardPlan, pp_rank: int) -> Dict[int, Dict[str, Tuple[int, ...]]]:
    """{chunk: {local name: per-tp-rank shape}} for pipeline stage `pp_rank` (all tp ranks have the
    same shapes: every split is even)."""
    strategies = plan.param_strategies()
    owner = param_owner(plan)
    layout = plan.cfg.layout
    out: Dict[int, Dict[str, Tuple[int, ...]]] = {v: {} for v in range(plan.cfg.vpp)}
    for name, shape in full_param_shapes(plan).items():
        stage, chunk = owner[name]
        if stage != pp_rank:
            continue
        split = strategies[name][1] if name in strategies else (1,) * len(shape)
        local = tuple(d // s for d, s in zip(shape, split))
        out[chunk][_local_name(name, layout, stage, chunk)] = local
    return out


def _local_name(name, layout, stage, chunk):
    m = _LAYER.match(name)
    if not m:
        return name
    pl = next(x for x in layout.placements if x.stage == stage and x.chunk == chunk)
    layers = pl.vit_layers if ".blocks.layers." in name else pl.llm_layers
    return f"{m.group(1)}{int(m.group(2)) - layers.start}{m.group(3)}"


def slice_for_rank(array, split: Tuple[int, ...], tp_rank: int):
    """The contiguous slice of a full (tp1) array that tensor-parallel rank `tp_rank` holds under a
    weight strategy `split` (at most one dim split, by tp)."""
    idx = []
    for d, s in enumerate(split):
        if s == 1:
            idx.append(slice(None))
        else:
            n = array.shape[d] // s
            idx.append(slice(tp_rank * n, (tp_rank + 1) * n))
    return array[tuple(idx)]


def _is_glu(name: str) -> bool:
    """The LLM's fused [gate; up] linear_fc1 weight, or the LoRA B over it (its rows are the same)."""
    return name.startswith(f"{TEXT_PREFIX}.decoder.layers.") and (
        name.endswith(".mlp.linear_fc1.weight") or name.endswith(".mlp.linear_fc1.lora_B.default.weight"))


def to_plan_layout(name: str, array, tp: int):
    """The in-memory order of a full (tp1 MM layout) parameter in a run with tensor parallel `tp`.

    Only the LLM's fused GLU `linear_fc1` (and a LoRA B over it) differs: [gate; up] becomes
    [gate_0, up_0, gate_1, up_1, ...] (rank r's mm-convert slice concat(gate[r], up[r]) at position
    r), so that contiguous per-rank slicing (what semi-auto parallel does) yields exactly the
    mm-convert rank file."""
    if tp == 1 or not _is_glu(name):
        return array
    gate, up = np.split(array, 2, axis=0)
    parts = []
    for g, u in zip(np.split(gate, tp, axis=0), np.split(up, tp, axis=0)):
        parts += [g, u]
    return np.concatenate(parts, axis=0)


def from_plan_layout(name: str, array, tp: int):
    """Inverse of to_plan_layout: back to MindSpeed-MM's tp1 [gate; up] order (for saving)."""
    if tp == 1 or not _is_glu(name):
        return array
    chunks = np.split(array, tp, axis=0)
    gates = [np.split(c, 2, axis=0)[0] for c in chunks]
    ups = [np.split(c, 2, axis=0)[1] for c in chunks]
    return np.concatenate(gates + ups, axis=0)
