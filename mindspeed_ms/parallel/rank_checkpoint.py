"""Checkpoints of a sharded run, rank by rank, in MindSpeed-MM's layout (mm-convert's split code).

Saving: each pipeline stage's parameters, merged over tensor parallel (MindSpore's integrated save
on Ascend; the parameters themselves in a CPU dry run), are put back in MindSpeed-MM's tp1 order
(`rank_params.from_plan_layout`) and cut with `checkpoint.mm_io.split_for_rank`, so the file of
rank (tp r, stage p) is exactly what `mm-convert` writes for that rank; the optimizer moments are cut
the same way. The ranks with dp index 0 and cp index 0 write; the others hold copies.

Loading: a rank reads only the tp files of its own stage when the checkpoint has the run's tp x pp
layout, merges them over tp (`tp_split.merge_tp`), renames the layers globally, and sets them
before compilation (MindSpore then keeps each rank's slice). A checkpoint of another layout (e.g.
mm-convert's tp1 pp1 release) is read through the merged reader and the stage's names kept.

Atomicity across processes: every writer puts its rank directory under one shared temporary
directory; after a barrier the committing rank renames it into place and moves
latest_checkpointed_iteration.txt last (the same order as `checkpoint.layout.AtomicTagDir`).
"""
import os
import shutil
from typing import Callable, Dict, Iterable, Optional, Tuple

import ml_dtypes
import numpy as np

from mindspeed_ms.checkpoint.layout import (FORMATS, LayoutDirError, latest_tag, parse_rank_dir, rank_dir_name,
                                            tag_dir_name, write_latest)
from mindspeed_ms.checkpoint.mm_io import MMCheckpointReader, split_for_rank, write_rank_payload
from mindspeed_ms.checkpoint.names import MM_EMBED, MM_OUTPUT
from mindspeed_ms.checkpoint.pp_split import ParallelLayout
from mindspeed_ms.checkpoint.tp_split import merge_tp
from mindspeed_ms.parallel.rank_params import from_plan_layout, param_owner, to_plan_layout
from mindspeed_ms.parallel.shard_plan import ShardPlan


def checkpoint_layout(plan: ShardPlan) -> ParallelLayout:
    """mm-convert's layout object for the plan's tp and pipeline_num_layers."""
    lay = plan.cfg.layout
    return ParallelLayout.build(plan.cfg.tp, [list(r) for r in lay.llm_chunks], [list(r) for r in lay.vit_chunks])


def stage_names(plan: ShardPlan, pp_rank: int, names: Iterable[str]) -> list:
    owner = param_owner(plan)
    return [n for n in names if n in owner and owner[n][0] == pp_rank]


def host_array(a) -> np.ndarray:
    """numpy array with bf16 as `ml_dtypes.bfloat16` (the checkpoint writers' bf16): MindSpore's
    `asnumpy()` returns its own bfloat16 scalar type, which they do not know (same bits)."""
    a = np.asarray(a)
    if a.dtype.name == "bfloat16" and a.dtype != np.dtype(ml_dtypes.bfloat16):
        return a.view(ml_dtypes.bfloat16)
    return a


def to_mm_order(named_arrays: Dict[str, np.ndarray], tp: int) -> Dict[str, np.ndarray]:
    """In-memory (plan layout, tp-merged) arrays -> MindSpeed-MM's tp1 order."""
    return {n: from_plan_layout(n, host_array(a), tp) for n, a in named_arrays.items()}


def rank_parts(mm_stage: Dict[str, np.ndarray], plan: ShardPlan, tp_rank: int, pp_rank: int) -> Dict:
    """The model part of rank (tp_rank, pp_rank)'s file from its stage's tp1 arrays (MM order):
    `mm_io.split_for_rank` on them ({"model": sd} or {"model0": ..., ...})."""
    return split_for_rank(mm_stage, tp_rank, pp_rank, checkpoint_layout(plan))


def shared_tmp_dir(root: str, iteration: int) -> str:
    return os.path.join(str(root), f".tmp-{tag_dir_name(int(iteration))}-sharded")


def write_rank_file(root: str, iteration: int, plan: ShardPlan, tp_rank: int, pp_rank: int,
                    mm_stage: Dict[str, np.ndarray], fmt: str = "torch", extra: Optional[Dict] = None) -> str:
    """Write rank (tp_rank, pp_rank)'s file into the iteration's shared temporary directory."""
    return write_rank_parts(root, iteration, plan, tp_rank, pp_rank, rank_parts(mm_stage, plan, tp_rank, pp_rank),
                            fmt, extra)


def write_rank_parts(root: str, iteration: int, plan: ShardPlan, tp_rank: int, pp_rank: int, parts: Dict,
                     fmt: str = "torch", extra: Optional[Dict] = None) -> str:
    """Write rank (tp_rank, pp_rank)'s file from its model parts ({"model": {local name: slice}} or
    model0, model1, ... with VPP) into the iteration's shared temporary directory."""
    layout = checkpoint_layout(plan)
    d = os.path.join(shared_tmp_dir(root, iteration), rank_dir_name(tp_rank, pp_rank, layout.pp))
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    kind = "safetensors" if fmt == "safetensors" else "pt"
    write_rank_payload(os.path.join(d, FORMATS[kind]), kind, parts, extra, layout.vpp)
    return d


def commit(root: str, iteration: int, plan: ShardPlan) -> str:
    """After every writer is done (barrier): check that all tp x pp rank directories exist, rename the
    shared temporary directory into place, then move the latest pointer."""
    layout = checkpoint_layout(plan)
    tmp = shared_tmp_dir(root, iteration)
    missing = [rank_dir_name(t, p, layout.pp) for p in range(layout.pp) for t in range(layout.tp)
               if not os.path.isdir(os.path.join(tmp, rank_dir_name(t, p, layout.pp)))]
    if missing:
        raise LayoutDirError(f"checkpoint of iteration {iteration} under {root}: rank directories {missing} were "
                             f"not written (a rank failed while saving); latest_checkpointed_iteration.txt is "
                             f"unchanged")
    final = os.path.join(str(root), tag_dir_name(int(iteration)))
    old = None
    if os.path.exists(final):
        old = final.rstrip("/") + ".old-sharded"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    write_latest(root, int(iteration))
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---- loading --------------------------------------------------------------------------------------

def _rank_dirs(tag_dir: str) -> Dict[Tuple[int, Optional[int]], str]:
    out = {}
    for name in sorted(os.listdir(tag_dir)):
        r = parse_rank_dir(name)
        if r is not None:
            out[r] = os.path.join(tag_dir, name)
    return out


def read_stage(root: str, plan: ShardPlan, pp_rank: int,
               names: Iterable[str]) -> Tuple[Dict[str, np.ndarray], Dict, str, bool]:
    """This stage's tensors of the checkpoint `latest_checkpointed_iteration.txt` points at, merged
    over tp and in MM order: (arrays for the wanted `names` of stage `pp_rank`, the extras of its tp-0
    file, tag, whether only this stage's files were read)."""
    tag = latest_tag(str(root))
    tag_dir = os.path.join(str(root), tag_dir_name(tag))
    if not os.path.isdir(tag_dir):
        raise LayoutDirError(f"{tag_dir} does not exist (latest_checkpointed_iteration.txt points to a missing "
                             f"directory)")
    wanted = stage_names(plan, pp_rank, names)
    layout = checkpoint_layout(plan)
    ranks = _rank_dirs(tag_dir)
    has_pp = layout.pp > 1
    same = set(ranks) == {(t, p if has_pp else None) for t in range(layout.tp) for p in range(layout.pp)}
    if same:
        opener = _RankFileOpener(tag_dir)
        parts, extras = [], []
        for t in range(layout.tp):
            chunks, ex = opener._open_rank(ranks[(t, pp_rank if has_pp else None)])
            parts.append(chunks)
            extras.append(ex)
        if len(parts[0]) != layout.vpp:
            raise LayoutDirError(f"{tag_dir}: stage {pp_rank}'s files hold {len(parts[0])} virtual-pipeline chunk(s), "
                                 f"the run has {layout.vpp}")
        out = _merge_stage(parts, layout, pp_rank, wanted)
        ex0 = dict(extras[0])
        opt = [e.get("optimizer") for e in extras]
        ex0.pop("optimizer", None)
        keys = _chunk_keys(layout)
        if all(isinstance(o, dict) and "exp_avg" in o for o in opt):
            if all(all(c in o["exp_avg"] for c in keys) for o in opt):
                # per-rank moments of a sharded run, cut like the parameters: merged the same way
                ex0["optimizer"] = {"step": opt[0]["step"], **{
                    k: _merge_stage([[o[k][c] for c in keys] for o in opt], layout, pp_rank, wanted)
                    for k in ("exp_avg", "exp_avg_sq")}}
            elif layout.tp == 1 and layout.pp == 1:
                ex0["optimizer"] = opt[0]          # the single-rank trainer's moments, by global name
        return _fill_tied(out, wanted, None), ex0, str(tag), True
    reader = MMCheckpointReader(root, tag)
    out = {n: reader.get(n) for n in wanted if n in reader}
    extras = dict(reader.extras.get((0, 0), {}))
    extras.pop("optimizer", None)          # moments of another layout do not fit this stage's ranks
    return _fill_tied(out, wanted, reader), extras, str(tag), False


class _RankFileOpener(MMCheckpointReader):
    """The merged reader's per-file opener alone (.pt or .safetensors, vpp chunks), without opening
    every rank file of the checkpoint as the reader does."""

    def __init__(self, tag_dir):                      # noqa: super().__init__ would open all ranks
        self.dir, self.fmt = tag_dir, None


def _chunk_keys(layout):
    return ["model"] if layout.vpp == 1 else [f"model{v}" for v in range(layout.vpp)]


def _merge_stage(parts, layout, pp_rank, wanted):
    """parts[t][v]: tp rank t's chunk v (local names) -> {global name: tp-merged array} for `wanted`."""
    out = {}
    for v, c in enumerate(layout.stage_chunks(pp_rank)):
        for local in parts[0][v].keys():
            g = layout.globalize(c, local)
            if g in wanted:
                out[g] = merge_tp(local, [np.asarray(_get(parts[t][v], local)) for t in range(len(parts))])
    return out


def _get(src, name):
    return src[name] if isinstance(src, dict) else src.get(name)


def _fill_tied(out, wanted, reader):
    # tied embeddings: a checkpoint without the output-layer copy (pp 1) gives it the table
    if MM_OUTPUT in wanted and MM_OUTPUT not in out:
        if MM_EMBED in out:
            out[MM_OUTPUT] = out[MM_EMBED]
        elif reader is not None and MM_EMBED in reader:
            out[MM_OUTPUT] = reader.get(MM_EMBED)
    return out


def load_stage_into(params: Dict, plan: ShardPlan, pp_rank: int, root: str, set_array: Callable) -> Dict:
    """Read stage `pp_rank` of the checkpoint under `root` and set each of this stage's `params`
    (name -> Parameter, full shapes: before compilation) with `set_array(param, array)`, in the
    plan's in-memory order. Raises ValueError naming what is missing or misshapen. Returns the
    tp-0 file's extras plus `tag` and `stage_only`."""
    arrays, extras, tag, stage_only = read_stage(root, plan, pp_rank, params.keys())
    wanted = stage_names(plan, pp_rank, params.keys())
    missing = [n for n in wanted if n not in arrays]
    if missing:
        raise ValueError(f"{root} (tag {tag}): stage {pp_rank} lacks {len(missing)} parameters of the model "
                         f"(first: {', '.join(missing[:3])}); check model.json against the checkpoint")
    tp = plan.cfg.tp
    for n in wanted:
        arr = to_plan_layout(n, np.asarray(arrays[n]), tp)
        if tuple(arr.shape) != tuple(params[n].shape):
            raise ValueError(f"{root} (tag {tag}): {n} has shape {tuple(arr.shape)}, the model expects "
                             f"{tuple(params[n].shape)}; check model.json against the checkpoint")
        set_array(params[n], arr)
    return {**extras, "tag": tag, "stage_only": stage_only}
