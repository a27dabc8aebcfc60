"""Lazy parameters on the sharded path: a rank allocates only its own slices.

A 72B model is ~145 GB in bf16, so a rank must never hold it whole. The sharded trainer therefore
1. builds the model inside MindSpore's `no_init_parameters()` (every weight of the model is an
   `initializer` Parameter: it keeps its shape and init rule, no memory),
2. applies the shard plan (strategies on primitives, stages on Cells: no data needed),
3. allocates each parameter of the rank's own pipeline stage at its plan slice (the strategy's
   contiguous tp piece of the in-memory layout, `rank_params.slice_for_rank`) and fills it from
   - its own mm-convert rank file / per-rank checkpoint file (tp r, stage p) when the checkpoint
     has the run's tp x pp layout: every tensor of that file is exactly the rank's slice (the GLU
     `linear_fc1` included: concat(gate_r, up_r) is slice r of the plan's GLU order), and nothing
     else is read (the .pt reader memory-maps, safetensors reads per tensor);
   - otherwise the merged reader of the checkpoint (another layout, e.g. mm-convert's tp1 pp1
     release): one tensor at a time, memory-mapped, cut to the slice;
   - without a checkpoint, a fresh random init drawn for the slice only: seeded by (--seed,
     parameter name, tp slice index), so tp-replicated parameters agree over tp ranks and dp
     copies agree over dp ranks (the tied output-layer copy draws the table's values); the values
   differ from a whole-model init with the same seed.
   Parameters of other stages stay unallocated. LoRA adapters are small and built eagerly; they
   are cut to their slice the same way.
4. builds the optimizer under `no_init_parameters()` too and allocates the AdamW moments of the
   own slices only (zeros, or the own rank file's moments on resume).

In the CPU dry mode (`sharded_trainer.dry_run(..., lazy=True)`) step 3 sets the slice shapes from
the plan (nothing is compiled). On Ascend, MindSpore's compile of the lazy network assigns each
parameter its layout and slice shape (`parallel._utils._slice_parameter`, new AutoParallel
interface: shape changed, nothing allocated); the trainer compiles first and then fills the same
slices, checking that the compiled slice shape is the plan's (not run: no Ascend machine).
"""
from __future__ import annotations

import os
import zlib
from contextlib import contextmanager
from typing import Dict, Optional, Tuple

import numpy as np

from mindspeed_ms.checkpoint.layout import latest_tag, tag_dir_name
from mindspeed_ms.checkpoint.mm_io import MMCheckpointReader
from mindspeed_ms.checkpoint.names import MM_EMBED, MM_OUTPUT
from mindspeed_ms.parallel.rank_params import _local_name, param_owner, slice_for_rank, to_plan_layout
from mindspeed_ms.parallel.shard_plan import ShardPlan


@contextmanager
def lazy_init():
    """Parameters created inside are not allocated (MindSpore's `no_init_parameters`)."""
    from mindspore.nn.utils import no_init_parameters
    with no_init_parameters():
        yield


def is_allocated(p) -> bool:
    return not p.has_init


def rank_split(plan: ShardPlan, name: str, ndim: int) -> Tuple[int, ...]:
    strategies = plan.param_strategies()
    return tuple(strategies[name][1]) if name in strategies else (1,) * ndim


def slice_shape(plan: ShardPlan, name: str, full_shape) -> Tuple[int, ...]:
    split = rank_split(plan, name, len(full_shape))
    return tuple(int(d) // s for d, s in zip(full_shape, split))


def local_key(plan: ShardPlan, name: str, owner=None) -> Tuple[int, int, str]:
    """(stage, virtual chunk, name inside that chunk's rank file) of a global parameter name."""
    owner = owner or param_owner(plan)
    stage, chunk = owner[name]
    return stage, chunk, _local_name(name, plan.cfg.layout, stage, chunk)


class RankSource:
    """The slices of one rank (tp_rank, pp_rank) in a checkpoint directory (see the module docstring)."""

    def __init__(self, root: str, plan: ShardPlan, tp_rank: int, pp_rank: int):
        from mindspeed_ms.parallel.rank_checkpoint import _RankFileOpener, _rank_dirs, checkpoint_layout
        self.root, self.plan, self.tp_rank, self.pp_rank = str(root), plan, tp_rank, pp_rank
        self.tag = latest_tag(self.root)
        tag_dir = os.path.join(self.root, tag_dir_name(self.tag))
        if not os.path.isdir(tag_dir):
            raise ValueError(f"{tag_dir} does not exist (latest_checkpointed_iteration.txt points to a missing "
                             f"directory)")
        layout = checkpoint_layout(plan)
        ranks = _rank_dirs(tag_dir)
        has_pp = layout.pp > 1
        self.own_file = set(ranks) == {(t, p if has_pp else None) for t in range(layout.tp) for p in range(layout.pp)}
        self.owner = param_owner(plan)
        self.reader = None
        if self.own_file:
            self.path = ranks[(tp_rank, pp_rank if has_pp else None)]
            self.chunks, self.extras = _RankFileOpener(tag_dir)._open_rank(self.path)
            if len(self.chunks) != layout.vpp:
                raise ValueError(f"{self.path}: {len(self.chunks)} virtual-pipeline chunk(s), the run has {layout.vpp}")
        else:
            self.reader = MMCheckpointReader(self.root, self.tag)
            self.path = self.reader.dir
            self.extras = dict(self.reader.extras.get((0, 0), {}))
            self.extras.pop("optimizer", None)     # moments of another layout do not fit this rank

    def __contains__(self, name) -> bool:
        if self.own_file:
            _, v, local = local_key(self.plan, name, self.owner)
            return local in self.chunks[v] or (name == MM_OUTPUT and MM_EMBED in self)
        return name in self.reader or (name == MM_OUTPUT and MM_EMBED in self.reader)

    def get(self, name: str) -> np.ndarray:
        """The rank's slice of `name` in the plan's in-memory order."""
        if self.own_file:
            _, v, local = local_key(self.plan, name, self.owner)
            if local not in self.chunks[v] and name == MM_OUTPUT:
                return self.get(MM_EMBED)
            return np.asarray(_get(self.chunks[v], local))
        src = MM_EMBED if (name == MM_OUTPUT and name not in self.reader) else name
        full = to_plan_layout(name, np.asarray(self.reader.get(src)), self.plan.cfg.tp)
        return np.ascontiguousarray(slice_for_rank(full, rank_split(self.plan, name, full.ndim), self.tp_rank))

    def moments(self) -> Optional[Dict]:
        """{"step", "exp_avg": {name: slice}, "exp_avg_sq": {...}} from the own rank file, or None."""
        opt = self.extras.get("optimizer") if self.own_file else None
        if not (isinstance(opt, dict) and "exp_avg" in opt):
            return None
        keys = ["model"] if len(self.chunks) == 1 else [f"model{v}" for v in range(len(self.chunks))]
        if not all(k in opt["exp_avg"] for k in keys):
            return None
        out = {"step": opt["step"], "exp_avg": {}, "exp_avg_sq": {}}
        for name, (stage, v) in self.owner.items():
            if stage != self.pp_rank:
                continue
            local = local_key(self.plan, name, self.owner)[2]
            for k in ("exp_avg", "exp_avg_sq"):
                if local in opt[k][keys[v]]:
                    out[k][name] = np.asarray(_get(opt[k][keys[v]], local))
        return out


def _get(src, name):
    return src[name] if isinstance(src, dict) else src.get(name)


def random_slice(p, shape, seed: int, tp_index: int, dtype=np.float32) -> np.ndarray:
    """A fresh init of one slice from the parameter's own initializer (Normal / One / Zero), as a
    numpy array of `dtype` (drawn in row blocks, so no fp32 copy of a whole bf16 slice is made)."""
    init = getattr(p.init_mode, "init", None)
    kind = type(init).__name__
    if kind == "One":
        return np.ones(shape, dtype)
    if kind == "Zero":
        return np.zeros(shape, dtype)
    if kind != "Normal":
        raise ValueError(f"lazy init of {p.name}: initializer {kind} has no slice rule (Normal, One, Zero)")
    # the tied output-layer copy draws the table's values (same vocab split)
    name = MM_EMBED if p.name == MM_OUTPUT else p.name
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), int(tp_index)])
    out = np.empty(shape, dtype)
    flat = out.reshape(shape[0], -1) if len(shape) else out.reshape(1, 1)
    rows = max(1, (1 << 22) // max(1, flat.shape[1]))
    for r in range(0, flat.shape[0], rows):
        x = rng.standard_normal((min(rows, flat.shape[0] - r), flat.shape[1]), dtype=np.float32)
        x *= np.float32(init.sigma)
        x += np.float32(init.mean)
        flat[r:r + len(x)] = x
    return out


def host_dtype(p):
    """The numpy dtype of a Parameter's dtype (bf16: ml_dtypes), or None for another dtype."""
    import ml_dtypes
    import mindspore as ms
    return {ms.bfloat16: ml_dtypes.bfloat16, ms.float32: np.float32, ms.float16: np.float16}.get(p.dtype)


def set_slice(p, array: np.ndarray):
    """Allocate `p` at the slice's shape with the slice's values (MindSpore marks it `sliced`)."""
    import mindspore as ms
    from mindspeed_ms.parallel.rank_checkpoint import host_array
    # convert on the host to the parameter's dtype first (bf16: ml_dtypes), so the largest slice is
    # held at most twice (the source and the Tensor) while it is set
    dtype = host_dtype(p)
    a = host_array(array)
    if dtype is None:
        p.set_data(ms.Tensor(np.asarray(a, np.float32)).astype(p.dtype), True)
        return
    p.set_data(ms.Tensor(np.ascontiguousarray(a, dtype=dtype)), True)


def fill_rank_params(params: Dict, plan: ShardPlan, tp_rank: int, pp_rank: int,
                     sources: Dict[str, Optional[RankSource]], seed: int, compiled: bool = False) -> Dict[str, str]:
    """Allocate and fill the parameters of stage `pp_rank` at their tp slices.

    `params`: name -> Parameter (lazy, or eager and whole for the LoRA adapters). `sources`:
    name -> RankSource to read from (None: keep an eager value, cut to the slice, or random init).
    `compiled`: MindSpore has already set the slice shapes (Ascend): they must equal the plan's.
    Returns name -> where the values came from ("file", "random", "kept")."""
    owner = param_owner(plan)
    how = {}
    for name, p in params.items():
        if name not in owner or owner[name][0] != pp_rank:
            continue
        full = tuple(p.shape)
        split = rank_split(plan, name, len(full))
        want = tuple(d // s for d, s in zip(full, split)) if not compiled else full
        if compiled and not p.sliced and any(s > 1 for s in split):
            raise ValueError(f"{name}: not sliced by the compiled network although the plan splits it {split}")
        src = sources.get(name)
        if src is not None:
            arr = src.get(name)
            how[name] = "file"
        elif is_allocated(p):
            arr = p.asnumpy() if compiled else slice_for_rank(p.asnumpy(), split, tp_rank)
            how[name] = "kept"
        else:
            tp_index = tp_rank if any(s > 1 for s in split) else 0
            arr = random_slice(p, want, seed, tp_index, host_dtype(p) or np.float32)
            how[name] = "random"
        if tuple(arr.shape) != want:
            where = f" ({src.path})" if src is not None else ""
            raise ValueError(f"{name}{where}: slice of shape {tuple(arr.shape)}, the plan gives this rank {want}; "
                             f"check model.json against the checkpoint")
        set_slice(p, arr)
    return how


def fill_moments(optimizer, names_here, moments: Optional[Dict]):
    """Allocate the AdamW moments of this rank's own parameters (zeros, or the checkpoint's slices)."""
    for p, m, v in zip(optimizer.params, optimizer.exp_avg, optimizer.exp_avg_sq):
        if p.name not in names_here:
            continue
        for dst, key in ((m, "exp_avg"), (v, "exp_avg_sq")):
            arr = moments[key].get(p.name) if moments else None
            if arr is None:
                if not dst.has_init and tuple(dst.shape) == tuple(p.shape):
                    continue            # cloned from the allocated slice: already zeros of its shape
                arr = np.zeros(tuple(p.shape), np.float32)
            if tuple(arr.shape) != tuple(p.shape):
                raise ValueError(f"optimizer state of {p.name}: shape {tuple(arr.shape)}, this rank's slice "
                                 f"{tuple(p.shape)}; add --no-load-optim")
            set_slice(dst, arr)


def allocated_bytes(params) -> int:
    """Bytes held by the allocated parameters among `params`."""
    return sum(int(np.prod(p.shape)) * p.itemsize for p in params if is_allocated(p))
