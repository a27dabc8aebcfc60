"""Qwen2-VL model configuration: MindSpeed-MM `model_*.json` and HF `config.json` <-> dataclasses.

The dataclasses keep every key that MindSpeed-MM's model json files carry (so a user's file loads
unchanged and can be written back), fill the derived fields the way MindSpeed-MM does
(`kv_channels = hidden/heads`, `ffn_hidden_size = 4*hidden`, `num_query_groups = heads`), and reject
an unknown key or a value of the wrong type with an error that names the key and the file.
Keys that only tune Ascend kernels or parallel execution (`use_fused_rotary_pos_emb`, `bf16`,
`recompute_*`, `pipeline_num_layers`, ...) are kept for the parallel/training packages.
"""
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

DTYPES = ("fp32", "fp16", "bf16")
# `image_encoder.vision_encoder.attention_mask_type` values qwen2vit runs (None: key absent)
VISION_MASK_TYPES = (None, "general")


class ModelConfigError(ValueError):
    """A model.json / config.json problem; the message names the file and the key."""


def _type_ok(value, hint):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is typing.Any:
        return True
    if origin in (list, List):
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, hint)


def _hint_name(hint):
    return str(hint).replace("typing.", "")


def _build(cls, data, where, section):
    """Instantiate dataclass `cls` from dict `data`, naming `section` and file `where` in errors."""
    if not isinstance(data, dict):
        raise ModelConfigError(f"{where}: '{section}' must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ModelConfigError(
                f"{where}: unknown key '{section}.{key}'; known keys of '{section}': {', '.join(sorted(names))}")
        if not _type_ok(value, hints[key]):
            raise ModelConfigError(
                f"{where}: key '{section}.{key}' has value {value!r} ({type(value).__name__}); expected {_hint_name(hints[key])}")
        kwargs[key] = float(value) if hints[key] in (float, Optional[float]) and value is not None else value
    obj = cls(**kwargs)
    obj._finalize(where, section)
    return obj


def _check(cond, where, key, msg):
    if not cond:
        raise ModelConfigError(f"{where}: key '{key}' {msg}")


def _check_no_dropout(cfg, where, section):
    """hidden_dropout / attention_dropout: every released Qwen2-VL file has 0.0; the model has no
    dropout layers, so another value is refused rather than ignored."""
    for key in ("hidden_dropout", "attention_dropout"):
        _check(getattr(cfg, key) == 0.0, where, f"{section}.{key}",
               f"is {getattr(cfg, key)}; dropout is not implemented here (Qwen2-VL's released configs use 0.0): "
               f"set it to 0.0")


def _check_pipeline_num_layers(value, num_layers, where, section):
    """`pipeline_num_layers` is flat (one count per stage, or pp*vpp counts) or MindSpeed-MM's VPP
    form, one list per virtual-pipeline chunk (`[[..pp..], [..pp..]]`). Without the run's pp/vpp
    only the shape of the value is known here: the parallel package's own normaliser checks it with
    the sizes the value itself implies (nested: vpp = number of lists, pp = their common length);
    `validate_parallel_config` checks it again against the flags."""
    if value is None:
        return
    from mindspeed_ms.parallel.layout import ParallelConfigError, normalize_pp_layers
    key = f"{section}.pipeline_num_layers"
    nested = bool(value) and all(isinstance(v, list) for v in value)
    if value and not nested and any(isinstance(v, list) for v in value):
        raise ModelConfigError(f"{where}: key '{key}' {value} mixes numbers and lists; use one count per "
                               f"stage ([1, 10, 10, 7]) or one list per virtual-pipeline chunk ([[..], [..]])")
    vpp = len(value) if nested else 1
    pp = len(value[0]) if nested else len(value)
    try:
        normalize_pp_layers(value, max(pp, 1), vpp, num_layers, key)
    except ParallelConfigError as e:
        raise ModelConfigError(f"{where}: key '{key}' is invalid: {e} (counts must be non-negative "
                               f"and sum to num_layers ({num_layers}))") from None


@dataclass
class VisionEncoderConfig:
    """`image_encoder.vision_encoder` (qwen2vit)."""
    # what a family accepts (a subclass of another family overrides these, config/qwen2_5vl_config.py)
    MODEL_IDS: ClassVar[tuple] = ("qwen2vit",)
    NORMS: ClassVar[tuple] = ("LayerNorm",)
    model_id: str = "qwen2vit"
    num_layers: int = 32
    hidden_size: int = 1280
    ffn_hidden_size: Optional[int] = None
    llm_hidden_size: Optional[int] = None
    num_attention_heads: int = 16
    kv_channels: Optional[int] = None
    num_query_groups: Optional[int] = None
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    layernorm_epsilon: float = 1e-6
    normalization: str = "LayerNorm"
    fp16: bool = False
    bf16: bool = False
    params_dtype: str = "fp32"
    activation_func: str = "quick_gelu"
    freeze: bool = False
    use_fused_rotary_pos_emb: bool = False
    post_layer_norm: bool = False
    add_qkv_bias: bool = True
    add_bias_linear: bool = True
    attention_softmax_in_fp32: bool = True
    init_method_std: float = 0.02
    pipeline_num_layers: Optional[list] = None   # flat [..pp..] or VPP-nested [[..pp..], ...]
    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None
    # MindSpeed-MM 2.2.0+: the mask the ViT attention uses. "general" = each image / frame attends
    # only within itself (the block-diagonal mask from cu_seqlens, what qwen2vit is trained with);
    # null (older releases) means the same.
    attention_mask_type: Optional[str] = None

    def _finalize(self, where, section):
        _check(self.model_id in self.MODEL_IDS, where, f"{section}.model_id",
               f"is '{self.model_id}'; this model family builds {' or '.join(map(repr, self.MODEL_IDS))}")
        _check(self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0, where,
               f"{section}.num_attention_heads", f"({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})")
        if self.kv_channels is None:
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        _check(self.kv_channels * self.num_attention_heads == self.hidden_size, where, f"{section}.kv_channels",
               f"({self.kv_channels}) * num_attention_heads must equal hidden_size ({self.hidden_size}) for qwen2vit")
        _check(self.kv_channels % 4 == 0, where, f"{section}.kv_channels", "must be a multiple of 4 (2-D rotary embedding)")
        _check(self.num_query_groups == self.num_attention_heads, where, f"{section}.num_query_groups",
               "must equal num_attention_heads: the qwen2vit attention has no grouped kv heads")
        _check(self.normalization in self.NORMS, where, f"{section}.normalization",
               f"is '{self.normalization}'; this model family uses '{self.NORMS[0]}'")
        _check(self.activation_func in ("quick_gelu", "gelu", "silu"), where, f"{section}.activation_func",
               f"is '{self.activation_func}'; one of quick_gelu, gelu, silu")
        _check(self.params_dtype in DTYPES, where, f"{section}.params_dtype", f"is '{self.params_dtype}'; one of {DTYPES}")
        _check(not self.post_layer_norm, where, f"{section}.post_layer_norm", "must be false: qwen2vit has no post layer norm")
        _check(self.add_qkv_bias and self.add_bias_linear, where, f"{section}.add_qkv_bias/add_bias_linear",
               "must be true: the Qwen2-VL checkpoints have ViT biases")
        _check_no_dropout(self, where, section)
        _check(self.attention_mask_type in VISION_MASK_TYPES, where, f"{section}.attention_mask_type",
               f"is {self.attention_mask_type!r}; qwen2vit supports 'general' (each image attends within "
               f"itself, bidirectionally) or null; a causal ViT mask is not how Qwen2-VL was trained")
        _check_pipeline_num_layers(self.pipeline_num_layers, self.num_layers, where, section)

    @property
    def patch_dim(self):
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size


@dataclass
class VisionProjectorConfig:
    """`image_encoder.vision_projector` (lnmlp, the PatchMerger)."""
    NORMS: ClassVar[tuple] = ("LayerNorm",)
    model_id: str = "lnmlp"
    num_layers: int = 1
    num_attention_heads: int = 1
    gated_linear_unit: bool = False
    bias_activation_fusion: bool = False
    add_bias_linear: bool = True
    input_size: Optional[int] = None
    hidden_size: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    activation_func: str = "gelu"
    fp16: bool = False
    bf16: bool = False
    params_dtype: str = "fp32"
    freeze: bool = False
    layernorm_epsilon: float = 1e-6
    normalization: str = "LayerNorm"

    def _finalize(self, where, section):
        _check(self.model_id == "lnmlp", where, f"{section}.model_id", f"is '{self.model_id}'; this framework builds 'lnmlp'")
        _check(self.activation_func == "gelu", where, f"{section}.activation_func", f"is '{self.activation_func}'; lnmlp uses 'gelu'")
        _check(not self.gated_linear_unit, where, f"{section}.gated_linear_unit", "must be false for lnmlp")
        _check(self.add_bias_linear, where, f"{section}.add_bias_linear", "must be true for lnmlp")
        _check(self.normalization in self.NORMS, where, f"{section}.normalization",
               f"must be '{self.NORMS[0]}' for this model family's lnmlp")
        _check(self.params_dtype in DTYPES, where, f"{section}.params_dtype", f"is '{self.params_dtype}'; one of {DTYPES}")


@dataclass
class TextDecoderConfig:
    """`text_decoder` (qwen2lm)."""
    MODEL_IDS: ClassVar[tuple] = ("qwen2lm",)
    model_id: str = "qwen2lm"
    num_layers: int = 28
    pipeline_num_layers: Optional[list] = None   # flat [..pp..] or VPP-nested [[..pp..], ...]
    hidden_size: int = 3584
    ffn_hidden_size: Optional[int] = None
    num_attention_heads: int = 28
    kv_channels: Optional[int] = None
    group_query_attention: bool = False
    num_query_groups: Optional[int] = None
    max_position_embeddings: int = 32768
    vocab_size: int = 152064
    rope_theta: float = 1000000.0
    untie_embeddings_and_output_weights: bool = True
    disable_bias_linear: bool = True
    attention_dropout: float = 0.0
    init_method_std: float = 0.01
    hidden_dropout: float = 0.0
    position_embedding_type: str = "mrope"
    normalization: str = "RMSNorm"
    activation_func: str = "silu"
    use_fused_rotary_pos_emb: bool = False
    use_fused_rmsnorm: bool = False
    use_fused_swiglu: bool = False
    attention_softmax_in_fp32: bool = True
    params_dtype: str = "fp32"
    bf16: bool = False
    fp16: bool = False
    parallel_output: bool = True
    mrope_section: List[int] = field(default_factory=lambda: [16, 24, 24])
    rope_scaling: Optional[dict] = None
    gated_linear_unit: bool = True
    layernorm_epsilon: float = 1e-6
    add_bias_linear: bool = False
    add_qkv_bias: bool = True
    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None

    def _finalize(self, where, section):
        _check(self.model_id in self.MODEL_IDS, where, f"{section}.model_id",
               f"is '{self.model_id}'; this model family builds {' or '.join(map(repr, self.MODEL_IDS))}")
        _check_no_dropout(self, where, section)
        _check(self.num_attention_heads > 0, where, f"{section}.num_attention_heads", "must be positive")
        if self.kv_channels is None:
            _check(self.hidden_size % self.num_attention_heads == 0, where, f"{section}.num_attention_heads",
                   f"({self.num_attention_heads}) must divide hidden_size ({self.hidden_size}) when kv_channels is absent")
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        _check(self.num_attention_heads % self.num_query_groups == 0, where, f"{section}.num_query_groups",
               f"({self.num_query_groups}) must divide num_attention_heads ({self.num_attention_heads})")
        _check(self.position_embedding_type == "mrope", where, f"{section}.position_embedding_type",
               f"is '{self.position_embedding_type}'; qwen2lm uses 'mrope'")
        _check(len(self.mrope_section) == 3 and 2 * sum(self.mrope_section) == self.kv_channels, where,
               f"{section}.mrope_section", f"{self.mrope_section} must have 3 entries summing to kv_channels/2 ({self.kv_channels // 2})")
        _check(self.normalization == "RMSNorm", where, f"{section}.normalization", f"is '{self.normalization}'; qwen2lm uses 'RMSNorm'")
        _check(self.activation_func == "silu" and self.gated_linear_unit, where, f"{section}.activation_func/gated_linear_unit",
               "must be 'silu' with gated_linear_unit true (SwiGLU)")
        _check(not self.add_bias_linear, where, f"{section}.add_bias_linear", "must be false: Qwen2 has no o_proj / MLP biases")
        _check(self.add_qkv_bias, where, f"{section}.add_qkv_bias", "must be true: Qwen2 has q/k/v biases")
        _check(self.rope_scaling is None or self.rope_scaling.get("type", self.rope_scaling.get("rope_type")) in ("mrope", "default"),
               where, f"{section}.rope_scaling", f"{self.rope_scaling} is not supported by Qwen2-VL (only mrope/default)")
        _check(self.params_dtype in DTYPES, where, f"{section}.params_dtype", f"is '{self.params_dtype}'; one of {DTYPES}")
        _check_pipeline_num_layers(self.pipeline_num_layers, self.num_layers, where, section)

    @property
    def tied(self):
        return not self.untie_embeddings_and_output_weights


@dataclass
class Qwen2VLConfig:
    """A whole model.json. `.vision`, `.projector`, `.text` are the three sub-configs."""
    vision: VisionEncoderConfig
    projector: VisionProjectorConfig
    text: TextDecoderConfig
    model_id: str = "qwen2vl"
    img_context_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    source: str = "<dict>"
    # keys present in the source file, so writing back keeps its shape
    present_top_keys: tuple = ()

    @property
    def image_token_id(self):
        return self.img_context_token_id

    def to_model_json_dict(self):
        """The MindSpeed-MM model.json dict (derived fields written out explicitly)."""
        def as_dict(obj):
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        out = {"model_id": self.model_id, "img_context_token_id": self.img_context_token_id,
               "video_token_id": self.video_token_id, "vision_start_token_id": self.vision_start_token_id,
               "image_encoder": {"vision_encoder": as_dict(self.vision), "vision_projector": as_dict(self.projector)},
               "text_decoder": as_dict(self.text), "text_encoder": None, "video_encoder": None}
        return out


_TOP_KEYS = {"model_id", "img_context_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
             "image_encoder", "text_decoder", "text_encoder", "video_encoder"}
_TOP_INT_KEYS = ("img_context_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass(frozen=True)
class ConfigSchema:
    """The model.json shape of one model family (models/registry.py maps model_id to it)."""
    model_id: str
    vision_cls: type
    projector_cls: type
    text_cls: type
    top_cls: type
    extra_top_keys: tuple = ()
    # Qwen2.5-VL's released 3B file gives the ViT's llm_hidden_size 1280 (unused by the model), so
    # that family does not check it against the LLM's hidden size
    check_llm_hidden_size: bool = True


QWEN2VL_SCHEMA = ConfigSchema("qwen2vl", VisionEncoderConfig, VisionProjectorConfig, TextDecoderConfig, Qwen2VLConfig)


def model_config_from_dict(data, where="<dict>", schema=None):
    """Validated config (`Qwen2VLConfig` or another family's) from a model.json dict; `where` names
    the file in errors. `schema`: the family's ConfigSchema, by default the one its model_id names."""
    if not isinstance(data, dict):
        raise ModelConfigError(f"{where}: the top level must be a JSON object")
    model_id = data.get("model_id", "qwen2vl")
    if schema is None:
        from mindspeed_ms.models.registry import family_for_model_id
        schema = family_for_model_id(model_id, where).config_schema()
    top_keys = _TOP_KEYS | set(schema.extra_top_keys)
    for key in data:
        if key not in top_keys:
            raise ModelConfigError(f"{where}: unknown key '{key}'; known top-level keys: {', '.join(sorted(top_keys))}")
    _check(model_id == schema.model_id, where, "model_id", f"is '{model_id}'; this framework builds '{schema.model_id}'")
    for key in _TOP_INT_KEYS:
        if key in data:
            _check(_type_ok(data[key], int), where, key, f"has value {data[key]!r}; expected an integer token id")
    for key in ("text_encoder", "video_encoder"):
        _check(data.get(key) is None, where, key, f"must be null for {schema.model_id} (videos go through image_encoder)")
    for key in ("image_encoder", "text_decoder"):
        _check(key in data, where, key, "is missing")
    enc = data["image_encoder"]
    if not isinstance(enc, dict):
        raise ModelConfigError(f"{where}: 'image_encoder' must be a JSON object")
    for key in enc:
        if key not in ("vision_encoder", "vision_projector"):
            raise ModelConfigError(f"{where}: unknown key 'image_encoder.{key}'; known: vision_encoder, vision_projector")
    _check("vision_encoder" in enc, where, "image_encoder.vision_encoder", "is missing")
    _check("vision_projector" in enc, where, "image_encoder.vision_projector", "is missing")
    vision = _build(schema.vision_cls, enc["vision_encoder"], where, "image_encoder.vision_encoder")
    text = _build(schema.text_cls, data["text_decoder"], where, "text_decoder")
    projector = _build(schema.projector_cls, enc["vision_projector"], where, "image_encoder.vision_projector")
    merged_in = vision.hidden_size * vision.spatial_merge_size ** 2
    if vision.llm_hidden_size is None:
        vision.llm_hidden_size = text.hidden_size
    if projector.input_size is None:
        projector.input_size = vision.hidden_size
    if projector.hidden_size is None:
        projector.hidden_size = text.hidden_size
    if projector.ffn_hidden_size is None:
        projector.ffn_hidden_size = merged_in
    _check(projector.input_size == vision.hidden_size, where, "image_encoder.vision_projector.input_size",
           f"({projector.input_size}) must equal vision_encoder.hidden_size ({vision.hidden_size})")
    _check(projector.hidden_size == text.hidden_size, where, "image_encoder.vision_projector.hidden_size",
           f"({projector.hidden_size}) must equal text_decoder.hidden_size ({text.hidden_size})")
    _check(vision.llm_hidden_size == text.hidden_size or not schema.check_llm_hidden_size, where, "image_encoder.vision_encoder.llm_hidden_size",
           f"({vision.llm_hidden_size}) must equal text_decoder.hidden_size ({text.hidden_size})")
    _check(projector.ffn_hidden_size == merged_in, where, "image_encoder.vision_projector.ffn_hidden_size",
           f"({projector.ffn_hidden_size}) must equal input_size * spatial_merge_size^2 ({merged_in}) as in the HF PatchMerger")
    top = {k: data[k] for k in _TOP_INT_KEYS if k in data}
    extra = {k: data[k] for k in schema.extra_top_keys if k in data}
    return schema.top_cls(vision=vision, projector=projector, text=text, source=where,
                          present_top_keys=tuple(data.keys()), **top, **extra)


# model.json switches of Megatron / MindSpeed kernels: true asks for a fused kernel that MindSpore's
# graph compiler makes by itself, so they change nothing here (a start-up notice says so)
_KERNEL_SWITCHES = {"use_fused_rotary_pos_emb": "rotary embedding", "use_fused_rmsnorm": "RMSNorm",
                    "use_fused_swiglu": "SwiGLU", "bias_activation_fusion": "bias + activation"}


def model_no_effect_notices(cfg):
    """One line per model.json value that asks for something this framework does not do differently."""
    out = []
    for section, sub in (("image_encoder.vision_encoder", cfg.vision), ("image_encoder.vision_projector", cfg.projector),
                         ("text_decoder", cfg.text)):
        for key, what in _KERNEL_SWITCHES.items():
            if getattr(sub, key, False):
                out.append(f"{cfg.source}: {section}.{key} = true has no effect here (MindSpore's graph compiler "
                           f"fuses the {what} itself; there is no kernel switch)")
        if not getattr(sub, "attention_softmax_in_fp32", True):
            out.append(f"{cfg.source}: {section}.attention_softmax_in_fp32 = false has no effect here (the "
                       f"attention softmax always runs in fp32)")
    if hasattr(cfg, "family_notices"):  # keys only another family's files carry (config/qwen2_5vl_config.py)
        out += cfg.family_notices()
    return out


def load_model_json(path):
    """Read and validate a MindSpeed-MM `model_*.json`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: model json not found (pass --mm-model with an existing file)") from None
    except json.JSONDecodeError as e:
        raise ModelConfigError(f"{path}: not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ModelConfigError(f"{path}: not UTF-8 text ({e}): save it as UTF-8 JSON") from None
    return model_config_from_dict(data, where=path)


# ---------------------------------------------------------------- HF config.json

def _read_hf(dict_or_dir):
    if isinstance(dict_or_dir, dict):
        return dict(dict_or_dir), "<hf config dict>"
    path = os.fspath(dict_or_dir)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: HF config.json not found") from None


def config_from_hf(dict_or_dir):
    """`Qwen2VLConfig` from an HF Qwen2-VL `config.json` (dict, file or checkpoint directory).

    Accepts both the released layout (text fields at the top level) and the transformers>=4.53
    layout with a nested `text_config`.
    """
    hf, where = _read_hf(dict_or_dir)
    model_type = hf.get("model_type", "qwen2_vl")
    if model_type != "qwen2_vl":
        from mindspeed_ms.models.registry import family_for_hf_model_type
        return family_for_hf_model_type(model_type, where).load("config_from_hf")(hf, where)
    text = hf_text_fields(hf)
    vis = hf.get("vision_config") or {}
    merge = vis.get("spatial_merge_size", 2)
    embed = vis.get("embed_dim", 1280)
    model_json = {
        "model_id": "qwen2vl", **hf_token_ids(hf),
        "image_encoder": {
            "vision_encoder": {
                "num_layers": vis.get("depth", 32), "hidden_size": embed,
                "ffn_hidden_size": int(embed * vis.get("mlp_ratio", 4)),
                "llm_hidden_size": text.get("hidden_size", 8192), "num_attention_heads": vis.get("num_heads", 16),
                "in_channels": vis.get("in_channels", vis.get("in_chans", 3)), "patch_size": vis.get("patch_size", 14),
                "spatial_merge_size": merge, "temporal_patch_size": vis.get("temporal_patch_size", 2),
                "activation_func": vis.get("hidden_act", "quick_gelu")},
            "vision_projector": {"input_size": embed, "hidden_size": text.get("hidden_size", 8192),
                                 "ffn_hidden_size": embed * merge * merge}},
        "text_decoder": hf_text_decoder(hf, text, where),
        "text_encoder": None, "video_encoder": None,
    }
    return model_config_from_dict(model_json, where=where, schema=QWEN2VL_SCHEMA)


def hf_text_fields(hf):
    """The LLM keys of an HF config: the top level, updated by a nested `text_config` (transformers
    >= 4.53 writes both)."""
    text = dict(hf)
    if isinstance(hf.get("text_config"), dict):
        text.update(hf["text_config"])
    return text


def hf_token_ids(hf):
    """The special-token ids of an HF Qwen-VL config under their model.json names."""
    return {"img_context_token_id": hf.get("image_token_id", 151655),
            "video_token_id": hf.get("video_token_id", 151656),
            "vision_start_token_id": hf.get("vision_start_token_id", 151652),
            "vision_end_token_id": hf.get("vision_end_token_id", 151653)}


def hf_text_decoder(hf, text, where, model_id="qwen2lm"):
    """The model.json `text_decoder` dict of a Qwen2 LLM from HF config fields `text`
    (`hf_text_fields`); shared by the Qwen2-VL and Qwen2.5-VL families."""
    if text.get("use_sliding_window", False):
        raise ModelConfigError(f"{where}: use_sliding_window=true is not part of Qwen2-VL (released configs set it false); "
                               "set it to false")
    rope_scaling = text.get("rope_scaling") or {}
    mrope = rope_scaling.get("mrope_section", [16, 24, 24])
    rtype = rope_scaling.get("rope_type", rope_scaling.get("type", "mrope"))
    if rtype not in ("mrope", "default"):
        raise ModelConfigError(f"{where}: rope_scaling type '{rtype}' is not supported by Qwen2-VL (only mrope/default)")
    heads = text.get("num_attention_heads", 64)
    hidden = text.get("hidden_size", 8192)
    kv = text.get("num_key_value_heads") or heads
    return {
        "model_id": model_id,
        "num_layers": text.get("num_hidden_layers", 80), "hidden_size": hidden,
        "ffn_hidden_size": text.get("intermediate_size", 29568), "num_attention_heads": heads,
        "kv_channels": hidden // heads, "group_query_attention": kv != heads, "num_query_groups": kv,
        "max_position_embeddings": text.get("max_position_embeddings", 32768),
        "vocab_size": text.get("vocab_size", 152064), "rope_theta": float(text.get("rope_theta", 1000000.0)),
        "untie_embeddings_and_output_weights": not hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False)),
        "mrope_section": list(mrope), "layernorm_epsilon": float(text.get("rms_norm_eps", 1e-5)),
        "activation_func": text.get("hidden_act", "silu")}


def config_to_hf(cfg):
    """HF `config.json` dict (released Qwen2-VL layout, loadable by transformers' Qwen2VLConfig)."""
    if cfg.model_id != "qwen2vl":
        from mindspeed_ms.models.registry import family_for_model_id
        return family_for_model_id(cfg.model_id, cfg.source).load("config_to_hf")(cfg)
    v, t = cfg.vision, cfg.text
    if v.ffn_hidden_size % v.hidden_size:
        raise ModelConfigError(f"{cfg.source}: vision ffn_hidden_size {v.ffn_hidden_size} is not a multiple of "
                               f"hidden_size {v.hidden_size}; HF expresses it as an integer mlp_ratio")
    return {
        **hf_text_config(cfg, "Qwen2VLForConditionalGeneration", "qwen2_vl"),
        "vision_config": {
            "depth": v.num_layers, "embed_dim": v.hidden_size, "mlp_ratio": v.ffn_hidden_size // v.hidden_size,
            "num_heads": v.num_attention_heads, "in_chans": v.in_channels, "in_channels": v.in_channels,
            "hidden_size": t.hidden_size, "hidden_act": v.activation_func, "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size, "temporal_patch_size": v.temporal_patch_size},
    }


def hf_text_config(cfg, architecture, model_type):
    """The LLM and token part of an HF config.json (released Qwen-VL layout), without vision_config."""
    t = cfg.text
    if t.kv_channels * t.num_attention_heads != t.hidden_size:
        raise ModelConfigError(f"{cfg.source}: text kv_channels*heads != hidden_size; HF Qwen-VL derives head_dim = hidden/heads")
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": cfg.vision_start_token_id,
        "vision_end_token_id": cfg.vision_end_token_id,
        "vision_token_id": 151654,
        "image_token_id": cfg.img_context_token_id,
        "video_token_id": cfg.video_token_id,
        "hidden_act": t.activation_func,
        "hidden_size": t.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": t.ffn_hidden_size,
        "max_position_embeddings": t.max_position_embeddings,
        "max_window_layers": t.num_layers,
        "num_attention_heads": t.num_attention_heads,
        "num_hidden_layers": t.num_layers,
        "num_key_value_heads": t.num_query_groups,
        "rms_norm_eps": t.layernorm_epsilon,
        "rope_theta": t.rope_theta,
        "sliding_window": 32768,
        "tie_word_embeddings": t.tied,
        "torch_dtype": "bfloat16" if t.bf16 else "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
        "vocab_size": t.vocab_size,
    }
