"""HF <-> MindSpeed-MM parameter names and fusions for Qwen2-VL (tp1, pp1), pure numpy.

MM names are the Megatron-core names that MindSpeed-MM checkpoints carry:

* LLM `linear_qkv` (weight and bias) interleaves q, k and v per KV group:
  `[q_g0, k_g0, v_g0, q_g1, ...]`, `q_g` holding the heads/kv_heads query heads of group g, so a
  TP rank's contiguous row block holds whole groups.
* LLM `linear_fc1 = concat(gate_proj, up_proj)` on dim 0.
* ViT `linear_qkv`: HF stores `[Q; K; V]` rows; MM regroups them per head `[q_h, k_h, v_h]`.

Everything works tensor by tensor: `iter_hf_to_mm` / `iter_mm_to_hf` pull only the source tensors
of one output at a time from any mapping-like source (a dict, or a lazy `HFCheckpoint`-style
object with `get`), so a converter can stream a model larger than memory.
"""
import re
from dataclasses import dataclass, field

import numpy as np


class ConversionError(ValueError):
    """State dict and config do not agree (unknown name, missing tensor, wrong shape)."""


@dataclass(frozen=True)
class Dims:
    """The sizes that the fusions and splits need, read from an HF config.json dict."""
    llm_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tie: bool
    vit_layers: int
    vit_dim: int
    vit_heads: int
    # HF model_type: which family's names and fusions apply (models/registry.py)
    model_type: str = "qwen2_vl"

    @property
    def vit_head_dim(self):
        return self.vit_dim // self.vit_heads

    @property
    def q_per_group(self):
        return self.heads // self.kv_heads

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "Dims":
        if not isinstance(cfg, dict):
            raise ConversionError(f"hf_config must be the config.json dict, got {type(cfg).__name__}")
        text = cfg.get("text_config") or {}

        def get(key, default=None):
            # transformers >= 4.5x writes the LLM keys both at top level and under text_config.
            if key in cfg and cfg[key] is not None:
                return cfg[key]
            if key in text and text[key] is not None:
                return text[key]
            if default is None:
                raise ConversionError(f"config.json has no '{key}' (neither at top level nor in text_config)")
            return default

        vision = cfg.get("vision_config")
        if not isinstance(vision, dict):
            raise ConversionError("config.json has no 'vision_config' object: not a Qwen2-VL config")
        model_type = cfg.get("model_type", "qwen2_vl")
        vit_dim_key = scheme_for_model_type(model_type).vit_dim_key
        hidden = int(get("hidden_size"))
        heads = int(get("num_attention_heads"))
        kv = int(get("num_key_value_heads", heads))
        for key in ("depth", vit_dim_key, "num_heads"):
            if key not in vision:
                raise ConversionError(f"config.json vision_config has no '{key}'")
        if heads % kv:
            raise ConversionError(f"config.json: num_attention_heads {heads} is not a multiple of "
                                  f"num_key_value_heads {kv}")
        tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        return cls(llm_layers=int(get("num_hidden_layers")), hidden=hidden, heads=heads, kv_heads=kv,
                   head_dim=int(get("head_dim", hidden // heads)), ffn=int(get("intermediate_size")),
                   vocab=int(get("vocab_size")), tie=bool(tie),
                   vit_layers=int(vision["depth"]), vit_dim=int(vision[vit_dim_key]),
                   vit_heads=int(vision["num_heads"]), model_type=model_type)


# ---- fusions (each with its exact inverse) ------------------------------------------------------

def fuse_llm_qkv(q, k, v, dims: Dims):
    g, hd = dims.kv_heads, dims.head_dim
    rest = q.shape[1:]
    parts = (q.reshape(g, dims.q_per_group * hd, *rest), k.reshape(g, hd, *rest), v.reshape(g, hd, *rest))
    return np.concatenate(parts, axis=1).reshape(-1, *rest)


def unfuse_llm_qkv(qkv, dims: Dims):
    g, hd, qg = dims.kv_heads, dims.head_dim, dims.q_per_group * dims.head_dim
    rest = qkv.shape[1:]
    x = qkv.reshape(g, qg + 2 * hd, *rest)
    return (np.ascontiguousarray(x[:, :qg]).reshape(-1, *rest),
            np.ascontiguousarray(x[:, qg:qg + hd]).reshape(-1, *rest),
            np.ascontiguousarray(x[:, qg + hd:]).reshape(-1, *rest))


def fuse_vit_qkv(qkv, dims: Dims):
    rest = qkv.shape[1:]
    x = qkv.reshape(3, dims.vit_heads, dims.vit_head_dim, *rest)
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape(-1, *rest)


def unfuse_vit_qkv(qkv, dims: Dims):
    rest = qkv.shape[1:]
    x = qkv.reshape(dims.vit_heads, 3, dims.vit_head_dim, *rest)
    return (np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape(-1, *rest),)


def fuse_glu(gate, up, dims: Dims):
    return np.concatenate([gate, up], axis=0)


def unfuse_glu(fc1, dims: Dims):
    half = fc1.shape[0] // 2
    return np.ascontiguousarray(fc1[:half]), np.ascontiguousarray(fc1[half:])


def _rename(x, dims):
    return x


def _unrename(x, dims):
    return (x,)


RENAME, LLM_QKV, VIT_QKV, GLU = "rename", "llm_qkv", "vit_qkv", "glu"
_FUSE = {RENAME: _rename, LLM_QKV: fuse_llm_qkv, VIT_QKV: fuse_vit_qkv, GLU: fuse_glu}
_UNFUSE = {RENAME: _unrename, LLM_QKV: unfuse_llm_qkv, VIT_QKV: unfuse_vit_qkv, GLU: unfuse_glu}

# ---- the name table ------------------------------------------------------------------------------
# (MM name, HF source names in fusion order, kind). {i} = layer number, {p} = weight|bias.
_V = "image_encoder.encoder.blocks.layers.{i}."
_L = "text_decoder.decoder.layers.{i}."
_TABLE = [
    ("image_encoder.encoder.patch_embed.proj.{p}", ("visual.patch_embed.proj.{p}",), RENAME),
    (_V + "input_layernorm.{p}", ("visual.blocks.{i}.norm1.{p}",), RENAME),
    (_V + "self_attention.linear_qkv.{p}", ("visual.blocks.{i}.attn.qkv.{p}",), VIT_QKV),
    (_V + "self_attention.linear_proj.{p}", ("visual.blocks.{i}.attn.proj.{p}",), RENAME),
    (_V + "pre_mlp_layernorm.{p}", ("visual.blocks.{i}.norm2.{p}",), RENAME),
    (_V + "mlp.linear_fc1.{p}", ("visual.blocks.{i}.mlp.fc1.{p}",), RENAME),
    (_V + "mlp.linear_fc2.{p}", ("visual.blocks.{i}.mlp.fc2.{p}",), RENAME),
    ("image_encoder.projector.layernorm.{p}", ("visual.merger.ln_q.{p}",), RENAME),
    ("image_encoder.projector.encoder.linear_fc1.{p}", ("visual.merger.mlp.0.{p}",), RENAME),
    ("image_encoder.projector.encoder.linear_fc2.{p}", ("visual.merger.mlp.2.{p}",), RENAME),
    ("text_decoder.embedding.word_embeddings.{p}", ("model.embed_tokens.{p}",), RENAME),
    (_L + "input_layernorm.{p}", ("model.layers.{i}.input_layernorm.{p}",), RENAME),
    (_L + "self_attention.linear_qkv.{p}", ("model.layers.{i}.self_attn.q_proj.{p}",
                                            "model.layers.{i}.self_attn.k_proj.{p}",
                                            "model.layers.{i}.self_attn.v_proj.{p}"), LLM_QKV),
    (_L + "self_attention.linear_proj.{p}", ("model.layers.{i}.self_attn.o_proj.{p}",), RENAME),
    (_L + "pre_mlp_layernorm.{p}", ("model.layers.{i}.post_attention_layernorm.{p}",), RENAME),
    (_L + "mlp.linear_fc1.{p}", ("model.layers.{i}.mlp.gate_proj.{p}", "model.layers.{i}.mlp.up_proj.{p}"), GLU),
    (_L + "mlp.linear_fc2.{p}", ("model.layers.{i}.mlp.down_proj.{p}",), RENAME),
    ("text_decoder.decoder.final_layernorm.{p}", ("model.norm.{p}",), RENAME),
    ("text_decoder.output_layer.{p}", ("lm_head.{p}",), RENAME),
]
MM_OUTPUT = "text_decoder.output_layer.weight"
MM_EMBED = "text_decoder.embedding.word_embeddings.weight"
HF_LM_HEAD = "lm_head.weight"


def _regex(fmt):
    out = re.escape(fmt).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class CheckpointScheme:
    """One family's checkpoint names: the HF <-> MM table, the TP split rules
    (checkpoint/tp_split.py) and the vision_config key of the ViT width."""
    name: str
    table: tuple
    tp_rules: tuple
    vit_dim_key: str = "embed_dim"
    hf_rules: list = field(init=False, compare=False, repr=False)
    mm_rules: list = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "hf_rules", [(_regex(src), mm, srcs, kind) for mm, srcs, kind in self.table
                                              for src in srcs])
        object.__setattr__(self, "mm_rules", [(_regex(mm), mm, srcs, kind) for mm, srcs, kind in self.table])


def _qwen2vl_tp_rules():
    from .tp_split import QWEN2VL_TP_RULES
    return QWEN2VL_TP_RULES


QWEN2VL_SCHEME = CheckpointScheme("qwen2vl", tuple(_TABLE), tuple(_qwen2vl_tp_rules()))


def scheme_for_model_type(model_type):
    """The checkpoint scheme of an HF model_type (a ConversionError names the known ones)."""
    if model_type == "qwen2_vl":
        return QWEN2VL_SCHEME
    from mindspeed_ms.config.model_config import ModelConfigError
    from mindspeed_ms.models.registry import family_for_hf_model_type
    try:
        return family_for_hf_model_type(model_type, "config.json").checkpoint_scheme()
    except ModelConfigError as e:
        raise ConversionError(str(e)) from None


def _scheme(dims):
    return QWEN2VL_SCHEME if dims is None else scheme_for_model_type(dims.model_type)

# Newer transformers save the inner modules under model.language_model / model.visual.
_HF_ALIASES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def normalize_hf_name(name: str) -> str:
    for new, old in _HF_ALIASES:
        if name.startswith(new):
            return old + name[len(new):]
    return name


def _fill(fmt, groups):
    return fmt.replace("{i}", groups.get("i") or "").replace("{p}", groups["p"])


def mm_sort_key(name: str):
    """Model order: ViT patch embed, ViT layers, projector, embedding, LLM layers, final norm, head."""
    sections = ("image_encoder.encoder.patch_embed", "image_encoder.encoder.blocks.layers.",
                "image_encoder.projector", "text_decoder.embedding", "text_decoder.decoder.layers.",
                "text_decoder.decoder.final_layernorm", "text_decoder.output_layer")
    for s, prefix in enumerate(sections):
        if name.startswith(prefix):
            m = re.match(r"(\d+)\.(.*)", name[len(prefix):]) if prefix.endswith("layers.") else None
            return (s, int(m.group(1)), m.group(2)) if m else (s, -1, name)
    return (len(sections), -1, name)


@dataclass(frozen=True)
class Entry:
    """One MM tensor and the HF tensors it is made of."""
    mm: str
    hf: tuple
    kind: str


def plan_from_hf_names(hf_names, dims: Dims, add_tied_output=False):
    """Entries (in model order) for the MM tensors that the HF names make up (HF names normalized).

    `add_tied_output`: with tied embeddings there is no separate head; pipeline-parallel layouts still
    need `output_layer.weight` on the last stage, so it is planned as a copy of the embedding."""
    by_mm = {}
    given = {normalize_hf_name(n): n for n in hf_names}
    scheme = _scheme(dims)
    for name in given:
        for rx, mm_fmt, srcs, kind in scheme.hf_rules:
            m = rx.match(name)
            if m:
                g = m.groupdict()
                mm = _fill(mm_fmt, g)
                if mm not in by_mm:
                    by_mm[mm] = Entry(mm, tuple(_fill(s, g) for s in srcs), kind)
                break
        else:
            raise ConversionError(f"HF tensor {name!r} is not a {scheme.name} parameter this converter knows")
    for e in by_mm.values():
        missing = [s for s in e.hf if s not in given]
        if missing:
            raise ConversionError(f"HF checkpoint lacks {missing[0]} (needed with {e.hf[0]} to build {e.mm})")
    if dims.tie and MM_OUTPUT in by_mm:
        # A tied model's head is the embedding: Megatron keeps no separate tensor at pp1.
        del by_mm[MM_OUTPUT]
    if add_tied_output and dims.tie and MM_EMBED in by_mm:
        by_mm[MM_OUTPUT] = Entry(MM_OUTPUT, ("model.embed_tokens.weight",), RENAME)
    return sorted(by_mm.values(), key=lambda e: mm_sort_key(e.mm))


def hf_entry_for_mm(mm_name: str, dims: Dims = None) -> Entry:
    """The HF sources of an MM tensor under `dims`' family (default Qwen2-VL)."""
    scheme = _scheme(dims)
    for rx, mm_fmt, srcs, kind in scheme.mm_rules:
        m = rx.match(mm_name)
        if m:
            g = m.groupdict()
            return Entry(mm_name, tuple(_fill(s, g) for s in srcs), kind)
    raise ConversionError(f"MM tensor {mm_name!r} is not a {scheme.name} parameter this converter knows")


def _get(src, name):
    return src.get(name) if not isinstance(src, dict) else src[name]


def check_fusion_shapes(entry, arrays, dims):
    """Fusions reshape by head counts: a config that does not match the tensors must fail here with
    names and numbers, not deep inside numpy."""
    if entry.kind == LLM_QKV:
        q, k, v = arrays
        want = (dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.kv_heads * dims.head_dim)
        got = (q.shape[0], k.shape[0], v.shape[0])
        if got != want:
            raise ConversionError(f"{entry.mm}: q/k/v have {got} rows but config.json (heads {dims.heads}, "
                                  f"kv heads {dims.kv_heads}, head_dim {dims.head_dim}) implies {want}")
    elif entry.kind == VIT_QKV:
        if arrays[0].shape[0] != 3 * dims.vit_dim:
            raise ConversionError(f"{entry.hf[0]} has {arrays[0].shape[0]} rows, vision_config.embed_dim "
                                  f"{dims.vit_dim} implies {3 * dims.vit_dim}")
        if dims.vit_dim % dims.vit_heads:
            raise ConversionError(f"vision_config.embed_dim {dims.vit_dim} is not a multiple of num_heads "
                                  f"{dims.vit_heads}")
    elif entry.kind == GLU and arrays[0].shape != arrays[1].shape:
        raise ConversionError(f"{entry.hf[0]} {arrays[0].shape} and {entry.hf[1]} {arrays[1].shape} differ")


def iter_hf_to_mm(hf_sd, hf_config: dict, add_tied_output=False):
    """Yield (mm_name, array) one at a time. `hf_sd`: a dict or any object with `keys()` and `get()`."""
    dims = Dims.from_hf_config(hf_config)
    plan = plan_from_hf_names(list(hf_sd.keys()), dims, add_tied_output)
    aliases = {normalize_hf_name(n): n for n in hf_sd.keys()}
    for e in plan:
        arrays = [_get(hf_sd, aliases[s]) for s in e.hf]
        check_fusion_shapes(e, arrays, dims)
        yield e.mm, _FUSE[e.kind](*arrays, dims)


def hf_to_mm_state_dict(hf_sd, hf_config: dict, add_tied_output=False) -> dict:
    """HF Qwen2-VL state dict (numpy) -> MM state dict (tp1, pp1) in model order.

    With tied embeddings the result has no `output_layer` unless `add_tied_output` (pipeline layouts)."""
    return dict(iter_hf_to_mm(hf_sd, hf_config, add_tied_output))


def iter_mm_to_hf(mm_sd, hf_config: dict, keep_lm_head=None):
    """Yield (hf_name, array) one at a time, reverting the fusions.

    `keep_lm_head`: whether to emit `lm_head.weight` from `output_layer`. Default: only when the
    embeddings are untied (a tied HF model stores no head)."""
    dims = Dims.from_hf_config(hf_config)
    if keep_lm_head is None:
        keep_lm_head = not dims.tie
    names = sorted(mm_sd.keys(), key=mm_sort_key)
    for name in names:
        e = hf_entry_for_mm(name, dims)
        if name == MM_OUTPUT and not keep_lm_head:
            continue
        arr = _get(mm_sd, name)
        if e.kind == LLM_QKV:
            want = (dims.heads + 2 * dims.kv_heads) * dims.head_dim
            if arr.shape[0] != want:
                raise ConversionError(f"{name} has {arr.shape[0]} rows, config.json implies {want}")
        elif e.kind == VIT_QKV and arr.shape[0] != 3 * dims.vit_dim:
            raise ConversionError(f"{name} has {arr.shape[0]} rows, config.json implies {3 * dims.vit_dim}")
        for hf_name, part in zip(e.hf, _UNFUSE[e.kind](arr, dims)):
            yield hf_name, part
    if keep_lm_head and dims.tie and MM_OUTPUT not in mm_sd and MM_EMBED in mm_sd:
        yield HF_LM_HEAD, _get(mm_sd, MM_EMBED)


def mm_to_hf_state_dict(mm_sd, hf_config: dict, keep_lm_head=None) -> dict:
    """MM state dict (tp1, pp1, merged) -> HF Qwen2-VL state dict with the on-disk HF names."""
    return dict(iter_mm_to_hf(mm_sd, hf_config, keep_lm_head))
