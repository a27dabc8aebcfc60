"""MindSpeed-MM rank files: split a merged MM state dict into TP/PP/VPP rank files and merge it back.

Public API (used by mm-convert, training checkpoints and the parallel package):

* `split_for_rank(mm_sd, tp_rank, pp_rank, layout) -> {"model": sd}` (vpp == 1) or
  `{"model0": sd0, "model1": sd1, ...}` (vpp > 1): exactly the model part of that rank's file, with
  local layer numbers and TP slices. `rank_shapes(shapes, tp_rank, pp_rank, layout)` gives the same
  structure holding shapes only (from {name: shape}).
* `write_mm_checkpoint(root, tag, mm_sd, layout, fmt="pt", extra_per_rank=None, progress=False)`:
  writes `<root>/<release|iter_N>/mp_rank_XX[_YYY]/model_optim_rng.pt` (a torch.save file
  `{"model": sd, "checkpoint_version": 3.0, **extra}`) or `model_optim_rng.safetensors`
  (fmt="safetensors"), atomically, then points `latest_checkpointed_iteration.txt` at `tag`.
  `mm_sd` is a dict or a lazy mapping with `keys()` and `get(name)`; `extra_per_rank` is a dict
  `{(tp_rank, pp_rank): dict}` or a callable `(tp_rank, pp_rank) -> dict` of additional entries
  (optimizer state, iteration, rng ...). With tied embeddings (no `output_layer` given) and pp > 1 the
  last stage gets a copy of the embedding as `output_layer`, as MindSpeed-MM does.
* `read_mm_checkpoint(root, tag=None, hf_config=None) -> (mm_sd, reader)`: the merged tp1/pp1 state
  dict; the layout (tp, pp, vpp, layers per chunk) is deduced from the directory and file contents.
  `reader.layout`, `reader.fmt`, `reader.tag`, `reader.extras[(tp_rank, pp_rank)]` describe the rest.
  With `hf_config` of a tied model, the pipeline copy `output_layer` is dropped.
* `MMCheckpointReader(root, tag=None)`: the lazy form (`keys()`, `get(name)`, `shape(name)`): merges
  one tensor at a time, so converters can stream.
* `latest_tag(root)` (from layout.py): 'release' or the iteration number.

Safetensors rank files hold the model tensors under their local names (prefixed `model{v}.` when
vpp > 1); `extra_per_rank` arrays are stored as `extra/<path>` tensors and other values as JSON in
the header metadata; such files load with `mindspore.load_checkpoint(path, format="safetensors")`.
"""
import json
import os
import re

import numpy as np

from auto_convert import torch_format
from .layout import (FORMATS, PT_FILE, SAFETENSORS_FILE, AtomicTagDir, LayoutDirError, latest_tag,
                     parse_rank_dir, rank_dir_name, tag_dir_name)
from .names import MM_EMBED, MM_OUTPUT, Dims
from .pp_split import LLM_LAYERS, VIT_LAYERS, ParallelLayout
from .safetensors_io import SafetensorsFile, save_safetensors
from .tp_split import merge_tp, split_tp, tp_shape

CHECKPOINT_VERSION = 3.0


def _keys(src):
    return list(src.keys())


def _get(src, name):
    return src[name] if isinstance(src, dict) else src.get(name)


def _rank_plan(names, layout: ParallelLayout, pp_rank: int):
    """[(chunk key, [(global source name, local name)])] for stage `pp_rank`."""
    names = list(names)
    sources = {n: n for n in names}
    if layout.pp > 1 and MM_OUTPUT not in sources and MM_EMBED in sources:
        sources[MM_OUTPUT] = MM_EMBED  # tied embeddings: the last stage needs its own copy
    per_chunk = {c: [] for c in layout.stage_chunks(pp_rank)}
    for target, src in sources.items():
        c, local = layout.place(target)
        if c in per_chunk:
            per_chunk[c].append((src, local))
    keys = ["model"] if layout.vpp == 1 else [f"model{v}" for v in range(layout.vpp)]
    return list(zip(keys, (per_chunk[c] for c in layout.stage_chunks(pp_rank))))


def _own(part, whole):
    # A TP slice is a view of the whole tensor; keep just the slice so the whole can be freed.
    if part is not whole and isinstance(part.base, np.ndarray) and part.size < whole.size:
        return np.array(part)
    return part


def split_for_rank(mm_sd, tp_rank: int, pp_rank: int, layout: ParallelLayout, tp_rules=None) -> dict:
    """The model part of rank (tp_rank, pp_rank)'s file: {"model": sd} or {"model0": ..., ...}.
    `tp_rules`: the family's TP split rules (`CheckpointScheme.tp_rules`; None = Qwen2-VL's)."""
    if not (0 <= tp_rank < layout.tp and 0 <= pp_rank < layout.pp):
        raise ValueError(f"rank (tp {tp_rank}, pp {pp_rank}) is outside tp_size {layout.tp} x pp {layout.pp}")
    out = {}
    for key, items in _rank_plan(_keys(mm_sd), layout, pp_rank):
        sd = {}
        for src, local in items:
            whole = _get(mm_sd, src)
            sd[local] = _own(split_tp(local, whole, layout.tp, tp_rank, tp_rules), whole)
        out[key] = sd
    return out


def rank_shapes(shapes: dict, tp_rank: int, pp_rank: int, layout: ParallelLayout, tp_rules=None) -> dict:
    """`split_for_rank` on shapes: {name: shape} of the merged model -> same structure as the file."""
    out = {}
    for key, items in _rank_plan(shapes.keys(), layout, pp_rank):
        out[key] = {local: tp_shape(local, shapes[src], layout.tp, tp_rules) for src, local in items}
    return out


# ---- writing ----------------------------------------------------------------------------------------

def _flatten_extra(obj, path, tensors):
    if isinstance(obj, np.ndarray):
        key = "extra/" + path
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _flatten_extra(v, f"{path}/{k}" if path else str(k), tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten_extra(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten_extra(obj, f):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return f.get(obj["__tensor__"])
        return {k: _unflatten_extra(v, f) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten_extra(v, f) for v in obj]
    return obj


def write_rank_payload(path, fmt, model_part, extra, vpp):
    if fmt == "safetensors":
        tensors = {}
        for key, sd in model_part.items():
            prefix = f"{key}." if vpp > 1 else ""
            for name, arr in sd.items():
                tensors[prefix + name] = arr
        extra_tensors = {}
        meta_extra = _flatten_extra(extra or {}, "", extra_tensors)
        clash = set(tensors) & set(extra_tensors)
        if clash:
            raise ValueError(f"extra_per_rank entry collides with a model tensor name: {sorted(clash)[0]}")
        tensors.update(extra_tensors)
        try:
            meta = {"format": "mindspeed-ms", "checkpoint_version": str(CHECKPOINT_VERSION), "vpp": str(vpp),
                    "extra": json.dumps(meta_extra)}
        except TypeError as e:
            raise TypeError(f"extra_per_rank values must be arrays or JSON values for safetensors files: {e}") from None
        save_safetensors(tensors, path, metadata=meta)
    else:
        obj = dict(model_part)
        obj["checkpoint_version"] = CHECKPOINT_VERSION
        for k, v in (extra or {}).items():
            if k in obj:
                raise ValueError(f"extra_per_rank key {k!r} collides with the model entries of {path}")
            obj[k] = v
        torch_format.save(obj, path)


def _check_fmt(fmt):
    if fmt not in FORMATS:
        raise ValueError(f"checkpoint format {fmt!r} is not one of {sorted(set(FORMATS))}")
    return "safetensors" if fmt == "safetensors" else "pt"


def write_mm_checkpoint(root, tag, mm_sd, layout: ParallelLayout, fmt="pt", extra_per_rank=None,
                        progress=False, update_latest=True, tp_rules=None):
    """Write `mm_sd` (merged tp1/pp1 names) as rank files of `layout` under `root`; see module doc."""
    fmt = _check_fmt(fmt)
    names = _keys(mm_sd)
    layout.check_order()
    for n in names:  # fail on an unplaceable name before anything is written
        layout.place(n)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=layout.tp * layout.pp, desc=f"writing {layout.tp}x{layout.pp} rank files", unit="file")
    with AtomicTagDir(root, tag, update_latest) as tmp:
        for pp_rank in range(layout.pp):
            for tp_rank in range(layout.tp):
                part = split_for_rank(mm_sd, tp_rank, pp_rank, layout, tp_rules)
                if callable(extra_per_rank):
                    extra = extra_per_rank(tp_rank, pp_rank)
                else:
                    extra = (extra_per_rank or {}).get((tp_rank, pp_rank))
                d = os.path.join(tmp, rank_dir_name(tp_rank, pp_rank, layout.pp))
                os.makedirs(d)
                write_rank_payload(os.path.join(d, FORMATS[fmt]), fmt, part, extra, layout.vpp)
                del part
                if bar:
                    bar.update(1)
    if bar:
        bar.close()
    return os.path.join(str(root), tag_dir_name(tag))


# ---- reading ----------------------------------------------------------------------------------------

_CHUNK_KEY = re.compile(r"model(\d*)\Z")


class MMCheckpointReader:
    """Lazy merged view of a MindSpeed-MM checkpoint directory (layout deduced from the files)."""

    def __init__(self, root, tag=None, tp_rules=None):
        self.root = str(root)
        self.tp_rules = tp_rules  # the family's TP split rules (None = Qwen2-VL's)
        self.tag = latest_tag(self.root) if tag is None else tag
        self.dir = os.path.join(self.root, tag_dir_name(self.tag))
        if not os.path.isdir(self.dir):
            raise LayoutDirError(f"{self.dir} does not exist (latest_checkpointed_iteration.txt or the tag "
                                 f"points to a missing directory)")
        ranks = {}
        for name in sorted(os.listdir(self.dir)):
            r = parse_rank_dir(name)
            if r is not None:
                ranks[r] = os.path.join(self.dir, name)
        if not ranks:
            raise LayoutDirError(f"{self.dir} has no mp_rank_* directories")
        kinds = {pp is not None for _, pp in ranks}
        if len(kinds) > 1:
            raise LayoutDirError(f"{self.dir} mixes mp_rank_XX and mp_rank_XX_YYY directories")
        has_pp = kinds.pop()
        tp = max(t for t, _ in ranks) + 1
        pp = max(p for _, p in ranks) + 1 if has_pp else 1
        def where(t, p):
            return (t, p if has_pp else None)
        for t in range(tp):
            for p in range(pp):
                if where(t, p) not in ranks:
                    raise LayoutDirError(f"{self.dir} lacks {rank_dir_name(t, p, 2 if has_pp else 1)} "
                                         f"(tp {tp} x pp {pp} rank directories expected)")
        self.fmt = None
        self._chunks = {}  # (tp, pp) -> [chunk dicts (lazy mapping)]
        self.extras = {}
        for t in range(tp):
            for p in range(pp):
                path = ranks[where(t, p)]
                self._chunks[(t, p)], self.extras[(t, p)] = self._open_rank(path)
        vpps = {len(c) for c in self._chunks.values()}
        if len(vpps) != 1:
            raise LayoutDirError(f"{self.dir}: rank files disagree on the number of virtual-pipeline chunks {sorted(vpps)}")
        vpp = vpps.pop()
        vit = [[self._count(0, p, v, VIT_LAYERS) for p in range(pp)] for v in range(vpp)]
        llm = [[self._count(0, p, v, LLM_LAYERS) for p in range(pp)] for v in range(vpp)]
        self.layout = ParallelLayout.build(tp, llm, vit)
        self._index = {}
        for p in range(pp):
            for v in range(vpp):
                c = self.layout.chunk_index(v, p)
                for local in self._chunks[(0, p)][v].keys():
                    g = self.layout.globalize(c, local)
                    if g in self._index:
                        raise LayoutDirError(f"{self.dir}: {g} appears in more than one pipeline chunk")
                    self._index[g] = (p, v, local)
                for t in range(1, tp):
                    if set(self._chunks[(t, p)][v].keys()) != set(self._chunks[(0, p)][v].keys()):
                        raise LayoutDirError(f"{self.dir}: tp ranks 0 and {t} of stage {p} hold different tensors")

    def _open_rank(self, path):
        pt, st = os.path.join(path, PT_FILE), os.path.join(path, SAFETENSORS_FILE)
        if os.path.isfile(pt):
            fmt = "pt"
        elif os.path.isfile(st):
            fmt = "safetensors"
        else:
            raise LayoutDirError(f"{path} has neither {PT_FILE} nor {SAFETENSORS_FILE}")
        if self.fmt not in (None, fmt):
            raise LayoutDirError(f"{self.dir} mixes .pt and .safetensors rank files")
        self.fmt = fmt
        if fmt == "pt":
            obj = torch_format.load(pt)
            if not isinstance(obj, dict):
                raise LayoutDirError(f"{pt} does not hold a dict (got {type(obj).__name__})")
            keys = sorted((k for k in obj if isinstance(k, str) and _CHUNK_KEY.match(k)),
                          key=lambda k: int(k[5:] or -1))
            if keys == ["model"]:
                chunks = [obj["model"]]
            elif keys and keys == [f"model{i}" for i in range(len(keys))]:
                chunks = [obj[k] for k in keys]
            else:
                raise LayoutDirError(f"{pt} holds {keys or 'no model entries'}; expected 'model' or model0, model1, ...")
            extras = {k: v for k, v in obj.items() if k not in keys and k != "checkpoint_version"}
            return chunks, extras
        f = SafetensorsFile(st)
        vpp = int(f.metadata.get("vpp", "1"))
        model_names = [k for k in f.keys() if not k.startswith("extra/")]
        if vpp == 1:
            chunks = [_Prefixed(f, "", model_names)]
        else:
            chunks = [_Prefixed(f, f"model{v}.", model_names) for v in range(vpp)]
        extras = _unflatten_extra(json.loads(f.metadata.get("extra", "{}")), f)
        return chunks, extras

    def _count(self, t, p, v, prefix):
        nums = [int(k[len(prefix):].split(".", 1)[0]) for k in self._chunks[(t, p)][v].keys() if k.startswith(prefix)]
        return max(nums) + 1 if nums else 0

    def keys(self):
        from .names import mm_sort_key
        return sorted(self._index, key=mm_sort_key)

    def __contains__(self, name):
        return name in self._index

    def _parts(self, name):
        p, v, local = self._index[name]
        return local, [_get(self._chunks[(t, p)][v], local) for t in range(self.layout.tp)]

    def get(self, name):
        if name not in self._index:
            raise KeyError(f"{name} is not in the checkpoint {self.dir}")
        local, parts = self._parts(name)
        return merge_tp(local, parts, self.tp_rules)

    def shape(self, name):
        local, parts = self._parts(name)
        return merge_tp(local, [np.empty(x.shape, np.bool_) for x in parts], self.tp_rules).shape


class _Prefixed:
    """One virtual-pipeline chunk of a safetensors rank file, keys without their `model{v}.` prefix."""

    def __init__(self, f, prefix, names):
        self.f, self.prefix = f, prefix
        self._keys = [n[len(prefix):] for n in names if n.startswith(prefix)]

    def keys(self):
        return list(self._keys)

    def get(self, name):
        return self.f.get(self.prefix + name)


def read_mm_checkpoint(root, tag=None, hf_config=None, tp_rules=None):
    """(merged tp1/pp1 MM state dict, reader); see the module docstring. The TP rules are the
    family's of `hf_config` when given, else `tp_rules` (None = Qwen2-VL's)."""
    dims = Dims.from_hf_config(hf_config) if hf_config is not None else None
    if dims is not None:
        from .names import scheme_for_model_type
        tp_rules = scheme_for_model_type(dims.model_type).tp_rules
    reader = MMCheckpointReader(root, tag, tp_rules)
    drop_output = dims is not None and dims.tie
    sd = {k: reader.get(k) for k in reader.keys() if not (drop_output and k == MM_OUTPUT)}
    return sd, reader
