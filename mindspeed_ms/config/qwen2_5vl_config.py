"""Qwen2.5-VL model configuration: MindSpeed-MM `model_*.json` (`model_id: "qwen2_5vl"`) and HF
`config.json` (`model_type: "qwen2_5_vl"`) <-> the Qwen2-VL dataclasses, extended.

What differs from Qwen2-VL (config/model_config.py holds the shared classes and checks):
- ViT (`qwen2vit`, the 72B file says `qwen2_5_vit`): RMSNorm, a gated SiLU MLP
  (`gated_linear_unit`, `intermediate_size` = `ffn_hidden_size`), window attention
  (`window_attn_size` pixels, `fullatt_block_indexes`) and `tokens_per_second` (M-RoPE time);
- the merger (`lnmlp`) normalises with RMSNorm;
- the LLM is `qwen2_5_lm` (the Qwen2 decoder, the same Cells as `qwen2lm`).
Keys MindSpeed-MM's released files carry that change nothing on this backend (the LLM's
`seq_length`: --seq-length rules; `bias_activation_fusion`, `use_remove_padding`, `use_vit_dp`, the
projector's `context_parallel_size`, `patch`) are accepted, kept, and named by a start-up notice
(`Qwen2_5VLConfig.family_notices`).
"""
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from mindspeed_ms.config.model_config import (ConfigSchema, ModelConfigError, Qwen2VLConfig, TextDecoderConfig,
                                              VisionEncoderConfig, VisionProjectorConfig, _check, hf_text_config,
                                              hf_text_decoder, hf_text_fields, hf_token_ids, model_config_from_dict)


@dataclass
class Qwen2_5VisionEncoderConfig(VisionEncoderConfig):
    """`image_encoder.vision_encoder` of Qwen2.5-VL."""
    MODEL_IDS: ClassVar[tuple] = ("qwen2vit", "qwen2_5_vit")
    NORMS: ClassVar[tuple] = ("RMSNorm",)
    normalization: str = "RMSNorm"
    activation_func: str = "silu"
    gated_linear_unit: bool = True
    bias_activation_fusion: bool = False
    intermediate_size: Optional[int] = None
    tokens_per_second: float = 2.0
    window_attn_size: int = 112
    fullatt_block_indexes: List[int] = field(default_factory=lambda: [7, 15, 23, 31])
    use_vit_dp: bool = False

    def _finalize(self, where, section):
        if self.ffn_hidden_size is None and self.intermediate_size is not None:
            self.ffn_hidden_size = self.intermediate_size
        super()._finalize(where, section)
        if self.intermediate_size is None:
            self.intermediate_size = self.ffn_hidden_size
        _check(self.intermediate_size == self.ffn_hidden_size, where, f"{section}.intermediate_size",
               f"({self.intermediate_size}) must equal ffn_hidden_size ({self.ffn_hidden_size})")
        _check(self.gated_linear_unit and self.activation_func == "silu", where,
               f"{section}.gated_linear_unit/activation_func", "must be true / 'silu': the Qwen2.5-VL ViT MLP is SwiGLU")
        unit = self.patch_size * self.spatial_merge_size
        _check(self.window_attn_size >= unit and self.window_attn_size % unit == 0, where,
               f"{section}.window_attn_size", f"({self.window_attn_size}) must be a positive multiple of "
               f"patch_size * spatial_merge_size ({unit}): a window holds whole merged patches")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.num_layers]
        _check(not bad, where, f"{section}.fullatt_block_indexes",
               f"{self.fullatt_block_indexes} must be layer numbers in [0, {self.num_layers})")
        _check(self.tokens_per_second > 0, where, f"{section}.tokens_per_second", "must be positive")

    @property
    def window_merged(self):
        """Window side in merged patches (HF's vit_merger_window_size: 112 px -> 4)."""
        return self.window_attn_size // self.spatial_merge_size // self.patch_size


@dataclass
class Qwen2_5VisionProjectorConfig(VisionProjectorConfig):
    """`image_encoder.vision_projector` of Qwen2.5-VL (the merger with RMSNorm)."""
    NORMS: ClassVar[tuple] = ("RMSNorm",)
    normalization: str = "RMSNorm"
    context_parallel_size: Optional[int] = None  # 72B file; the run's --context-parallel-size rules


@dataclass
class Qwen2_5TextDecoderConfig(TextDecoderConfig):
    """`text_decoder` (qwen2_5_lm)."""
    MODEL_IDS: ClassVar[tuple] = ("qwen2_5_lm",)
    model_id: str = "qwen2_5_lm"
    max_position_embeddings: int = 128000
    seq_length: Optional[int] = None
    bias_activation_fusion: bool = False
    use_remove_padding: bool = False


@dataclass
class Qwen2_5VLConfig(Qwen2VLConfig):
    """A whole Qwen2.5-VL model.json."""
    model_id: str = "qwen2_5vl"
    patch: Optional[dict] = None

    def family_notices(self):
        """Start-up notices for the keys of Qwen2.5-VL's released files that change nothing here."""
        v, p, t, src = self.vision, self.projector, self.text, self.source
        out = []
        if t.seq_length is not None:
            out.append(f"{src}: text_decoder.seq_length = {t.seq_length} has no effect here (--seq-length sets the "
                       f"sequence length)")
        if t.use_remove_padding:
            out.append(f"{src}: text_decoder.use_remove_padding = true has no effect here (padding is masked; the "
                       f"CPU path drops rows without a loss)")
        if v.use_vit_dp:
            out.append(f"{src}: image_encoder.vision_encoder.use_vit_dp = true has no effect here (the ViT runs "
                       f"with the step's data parallel)")
        if p.context_parallel_size not in (None, 1):
            out.append(f"{src}: image_encoder.vision_projector.context_parallel_size has no effect here "
                       f"(--context-parallel-size sets context parallel)")
        if self.patch:
            out.append(f"{src}: patch = {self.patch} has no effect here (MindSpeed-MM's torch patches)")
        return out


QWEN2_5VL_SCHEMA = ConfigSchema("qwen2_5vl", Qwen2_5VisionEncoderConfig, Qwen2_5VisionProjectorConfig,
                                Qwen2_5TextDecoderConfig, Qwen2_5VLConfig, extra_top_keys=("patch",),
                                check_llm_hidden_size=False)


def config_from_hf(hf, where="<hf config dict>"):
    """`Qwen2_5VLConfig` from an HF Qwen2.5-VL `config.json` dict (released or nested layout)."""
    if not isinstance(hf, dict):
        from mindspeed_ms.config.model_config import _read_hf
        hf, where = _read_hf(hf)
    if hf.get("model_type") != "qwen2_5_vl":
        raise ModelConfigError(f"{where}: model_type is '{hf.get('model_type')}'; this loader reads Qwen2.5-VL "
                               f"('qwen2_5_vl') configs")
    text = hf_text_fields(hf)
    vis = hf.get("vision_config") or {}
    embed = vis.get("hidden_size", 1280)
    merge = vis.get("spatial_merge_size", 2)
    ffn = vis.get("intermediate_size", 3420)
    model_json = {
        "model_id": "qwen2_5vl", **hf_token_ids(hf),
        "image_encoder": {
            "vision_encoder": {
                "num_layers": vis.get("depth", 32), "hidden_size": embed, "ffn_hidden_size": ffn,
                "intermediate_size": ffn, "llm_hidden_size": vis.get("out_hidden_size", text.get("hidden_size")),
                "num_attention_heads": vis.get("num_heads", 16),
                "in_channels": vis.get("in_channels", vis.get("in_chans", 3)), "patch_size": vis.get("patch_size", 14),
                "spatial_merge_size": merge, "temporal_patch_size": vis.get("temporal_patch_size", 2),
                "activation_func": vis.get("hidden_act", "silu"),
                "tokens_per_second": float(vis.get("tokens_per_second", 4)),
                "window_attn_size": vis.get("window_size", 112),
                "fullatt_block_indexes": list(vis.get("fullatt_block_indexes", [7, 15, 23, 31]))},
            "vision_projector": {"input_size": embed, "hidden_size": vis.get("out_hidden_size", text.get("hidden_size")),
                                 "ffn_hidden_size": embed * merge * merge}},
        "text_decoder": hf_text_decoder(hf, text, where, model_id="qwen2_5_lm"),
        "text_encoder": None, "video_encoder": None,
    }
    return model_config_from_dict(model_json, where=where, schema=QWEN2_5VL_SCHEMA)


def config_to_hf(cfg):
    """HF `config.json` dict (released Qwen2.5-VL layout, loadable by transformers' Qwen2_5_VLConfig)."""
    v, p = cfg.vision, cfg.projector
    tps = v.tokens_per_second
    return {
        **hf_text_config(cfg, "Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
        "vision_config": {
            "depth": v.num_layers, "hidden_size": v.hidden_size, "intermediate_size": v.ffn_hidden_size,
            "num_heads": v.num_attention_heads, "in_chans": v.in_channels, "in_channels": v.in_channels,
            "out_hidden_size": p.hidden_size, "hidden_act": v.activation_func, "patch_size": v.patch_size,
            "spatial_patch_size": v.patch_size, "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size, "window_size": v.window_attn_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "tokens_per_second": int(tps) if float(tps).is_integer() else tps},
    }
