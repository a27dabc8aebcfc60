"""Checkpoint conversions of every model family: hf_to_mm, mm_to_hf, resplit (the engine behind
`mm-convert`). The family's names, fusions and TP rules (`names.CheckpointScheme`) come from the HF
config.json's model_type, or for resplit from the converter named on the command line.

All three stream: HF safetensors and MM rank files are memory-mapped, tensors are fused, split and
written one rank file (or one HF shard) at a time, so peak memory stays near one output file plus the
largest tensor. Outputs are built under temporary names and renamed into place at the end: a failed
conversion leaves nothing that a later load could take for a complete checkpoint.
"""
import os
import shutil
import uuid

from .hf_io import (SINGLE_FILE, CheckpointError, HFCheckpoint, copy_hf_side_files,
                    write_hf_index)
from .layout import LATEST_FILE, tag_dir_name
from .mm_io import MMCheckpointReader, write_mm_checkpoint
from .output_dir import MANIFEST, check_output_dir, read_manifest, write_manifest
from .names import (MM_OUTPUT, ConversionError, Dims, _FUSE, _UNFUSE, check_fusion_shapes, hf_entry_for_mm,
                    normalize_hf_name, plan_from_hf_names, scheme_for_model_type)
from .pp_split import LayoutError, ParallelLayout
from .safetensors_io import save_safetensors


class _HFAsMM:
    """Lazy MM-named view of an HF checkpoint: each `get` fuses that one tensor from memory-mapped HF."""

    def __init__(self, ckpt: HFCheckpoint, dims: Dims):
        self.ckpt, self.dims = ckpt, dims
        self.aliases = {normalize_hf_name(n): n for n in ckpt.keys()}
        self.plan = {e.mm: e for e in plan_from_hf_names(ckpt.keys(), dims)}

    def keys(self):
        return list(self.plan)

    def get(self, name):
        e = self.plan[name]
        arrays = [self.ckpt.get(self.aliases[s]) for s in e.hf]
        check_fusion_shapes(e, arrays, self.dims)
        return _FUSE[e.kind](*arrays, self.dims)


def _check_family(dims, model_type, hf_dir):
    if model_type is not None and dims.model_type != model_type:
        raise ConversionError(f"{hf_dir} holds a '{dims.model_type}' model (config.json model_type) but the "
                              f"converter is for '{model_type}': use the converter of that model")


def hf_to_mm(hf_dir, mm_dir, llm_pp_layers, vit_pp_layers, tp_size=1, fmt="pt", progress=True, model_type=None):
    """HF directory -> MindSpeed-MM `release` checkpoint in `mm_dir` with the given layout
    (`model_type`: the converter's family, checked against config.json; None = any)."""
    check_output_dir(mm_dir, "--cfg.mm_dir", "hf_to_mm", {"--cfg.hf_config.hf_dir": hf_dir})
    ckpt = HFCheckpoint(hf_dir)
    dims = Dims.from_hf_config(ckpt.config)
    _check_family(dims, model_type, hf_dir)
    layout = ParallelLayout.build(tp_size, llm_pp_layers, vit_pp_layers)
    layout.validate(dims)
    source = _HFAsMM(ckpt, dims)
    return _write_mm(mm_dir, "hf_to_mm", "release", source, layout, fmt, progress,
                     scheme_for_model_type(dims.model_type).tp_rules)


def _write_mm(root, command, tag, source, layout, fmt, progress, tp_rules):
    """write_mm_checkpoint, then record the tag directory and the pointer file as this tool's own."""
    mine = read_manifest(root) if os.path.isdir(str(root)) else set()
    out = write_mm_checkpoint(root, tag, source, layout, fmt=fmt, progress=progress, tp_rules=tp_rules)
    write_manifest(root, command, mine | {tag_dir_name(tag), LATEST_FILE})
    return out


def _check_given_layout(reader, tp_size, llm_pp_layers, vit_pp_layers, what):
    """The layout on the command line must be the one in the files (the files are the truth)."""
    if llm_pp_layers is None and vit_pp_layers is None and tp_size is None:
        return
    found = reader.layout
    try:
        given = ParallelLayout.build(found.tp if tp_size is None else tp_size,
                                     llm_pp_layers if llm_pp_layers is not None else [list(r) for r in found.llm_layers],
                                     vit_pp_layers if vit_pp_layers is not None else [list(r) for r in found.vit_layers])
    except LayoutError as e:
        raise LayoutError(f"{what}: {e}") from None
    if given != found:
        raise LayoutError(
            f"{what} says tp_size {given.tp}, llm_pp_layers {_show(given.llm_layers)}, vit_pp_layers "
            f"{_show(given.vit_layers)}, but {reader.dir} holds tp_size {found.tp}, llm_pp_layers "
            f"{_show(found.llm_layers)}, vit_pp_layers {_show(found.vit_layers)}: fix the options to match "
            f"the checkpoint")


def _show(rows):
    return [list(r) for r in rows] if len(rows) > 1 else list(rows[0])


class _AtomicDir:
    """Build a directory under a sibling temporary name; publish it on success.

    A new (or empty) `final` becomes the temporary directory by one rename. A `final` that holds an
    earlier mm-convert output (checked by `check_output_dir` before anything was written) gets the new
    files moved in one by one; of its old entries only those its manifest lists are replaced or removed."""

    def __init__(self, final, command):
        self.final, self.command = os.path.abspath(str(final)), command

    def __enter__(self):
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = f"{self.final}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        new = sorted(os.listdir(self.tmp))
        if not os.path.exists(self.final):
            write_manifest(self.tmp, self.command, new)
            os.rename(self.tmp, self.final)
            return False
        old_mine = read_manifest(self.final)
        for name in new:
            os.replace(os.path.join(self.tmp, name), os.path.join(self.final, name))
        os.rmdir(self.tmp)
        for name in sorted(old_mine - set(new) - {MANIFEST}):  # e.g. shards of an earlier plan: ours
            path = os.path.join(self.final, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)
        write_manifest(self.final, self.command, new)
        return False


def mm_to_hf(mm_dir, hf_dir, save_hf_dir, llm_pp_layers=None, vit_pp_layers=None, tp_size=None,
             tag=None, progress=True, model_type=None):
    """MM checkpoint -> HF directory `save_hf_dir`: shards follow `hf_dir`'s index (or one file), the
    other files of `hf_dir` (config, tokenizer, processor) are copied, tensor dtypes are kept."""
    check_output_dir(save_hf_dir, "--cfg.save_hf_dir", "mm_to_hf",
                     {"--cfg.hf_config.hf_dir": hf_dir, "--cfg.mm_dir": mm_dir})
    src = HFCheckpoint(hf_dir)
    dims = Dims.from_hf_config(src.config)
    _check_family(dims, model_type, hf_dir)
    reader = MMCheckpointReader(mm_dir, tag, scheme_for_model_type(dims.model_type).tp_rules)
    _check_given_layout(reader, tp_size, llm_pp_layers, vit_pp_layers, "--cfg.parallel_config")
    want = src.keys()  # names exactly as in the source (old or new transformers style)
    by_norm = {normalize_hf_name(n): n for n in want}
    # Which MM tensor each HF tensor comes from, and which part of its unfusion it is.
    source_of = {}
    for mm in reader.keys():
        e = hf_entry_for_mm(mm, dims)
        if mm == MM_OUTPUT and "lm_head.weight" not in by_norm:
            continue  # tied model: the head is the embedding (a pipeline copy is not written back)
        for i, h in enumerate(e.hf):
            source_of[h] = (mm, i)
    if dims.tie and "lm_head.weight" in by_norm and "lm_head.weight" not in source_of:
        source_of["lm_head.weight"] = ("text_decoder.embedding.word_embeddings.weight", 0)
    missing = [n for n in by_norm if n not in source_of]
    if missing:
        raise ConversionError(f"{reader.dir} lacks the MM tensor for HF {missing[0]} "
                              f"({len(missing)} HF tensors of {hf_dir} have no source)")
    extra = [h for h in source_of if h not in by_norm]
    if extra:
        raise ConversionError(f"{reader.dir} holds {source_of[extra[0]][0]}, which has no place in {hf_dir}'s "
                              f"weights ({len(extra)} such HF tensors, e.g. {extra[0]})")
    shards = src.shards()
    cache = {}  # unfused parts of MM tensors whose siblings live in a later shard

    def hf_tensor(norm_name):
        mm, i = source_of[norm_name]
        key = (mm, i)
        if key not in cache:
            e = hf_entry_for_mm(mm, dims)
            arr = reader.get(mm)
            for j, part in enumerate(_UNFUSE[e.kind](arr, dims)):
                cache[(mm, j)] = part
        return cache.pop(key)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(want), desc="mm_to_hf", unit="tensor")
    weight_map, total = {}, 0
    with _AtomicDir(save_hf_dir, "mm_to_hf") as tmp:
        for shard in shards:
            names = [n for n in want if src.file_of(n) == shard]
            tensors = {}
            for n in names:
                tensors[n] = hf_tensor(normalize_hf_name(n))
                if bar:
                    bar.update(1)
            out_name = SINGLE_FILE if not src.sharded else shard
            save_safetensors(tensors, os.path.join(tmp, out_name), metadata={"format": "pt"})
            for n, a in tensors.items():
                weight_map[n] = out_name
                total += a.nbytes
            del tensors
        if src.sharded:
            write_hf_index(tmp, weight_map, total)
        copy_hf_side_files(hf_dir, tmp)
    if bar:
        bar.close()
    return str(save_hf_dir)


def resplit(source_dir, target_dir, target_llm_pp_layers, target_vit_pp_layers, target_tp_size=1,
            source_llm_pp_layers=None, source_vit_pp_layers=None, source_tp_size=None, hf_dir=None,
            fmt=None, tag=None, progress=True, model_type="qwen2_vl"):
    """MM -> MM with another TP/PP/VPP layout, working on MM names directly (no HF round trip).

    Only the model is carried over (optimizer state is layout-specific). With `hf_dir`, its config.json
    is used for the kv-head checks and to drop a tied model's pipeline copy of the head at target pp 1.
    `model_type`: the family (HF model_type) whose TP rules apply; `hf_dir`'s config must agree."""
    check_output_dir(target_dir, "--cfg.target_dir", "resplit",
                     {"--cfg.source_dir": source_dir, "--cfg.hf_config.hf_dir": hf_dir})
    tp_rules = scheme_for_model_type(model_type).tp_rules
    reader = MMCheckpointReader(source_dir, tag, tp_rules)
    _check_given_layout(reader, source_tp_size, source_llm_pp_layers, source_vit_pp_layers,
                        "--cfg.source_parallel_config")
    target = ParallelLayout.build(target_tp_size, target_llm_pp_layers, target_vit_pp_layers)
    reader.layout.same_model(target)
    target.check_order()
    source = reader
    if hf_dir is not None:
        cfg = HFCheckpoint(hf_dir).config
        dims = Dims.from_hf_config(cfg)
        _check_family(dims, model_type, hf_dir)
        target.validate(dims)
        if dims.tie and target.pp == 1 and MM_OUTPUT in reader:
            source = _Without(reader, MM_OUTPUT)
    if os.path.abspath(str(source_dir)) == os.path.abspath(str(target_dir)):
        raise LayoutError("resplit target_dir must differ from source_dir (the source is read while writing)")
    return _write_mm(target_dir, "resplit", reader.tag, source, target, fmt or reader.fmt, progress, tp_rules)


class _Without:
    def __init__(self, src, name):
        self.src, self.name = src, name

    def keys(self):
        return [k for k in self.src.keys() if k != self.name]

    def get(self, name):
        return self.src.get(name)
