"""Parameter names and shapes of the MindSpeed-MM Qwen2-VL layout (tp1, pp1), computed from a
config without allocating any weight. The model Cells create exactly these parameters (tested),
and memory estimates / shard plans / checkpoint checks can use them on any machine."""
from collections import OrderedDict

VISION_PREFIX = "image_encoder.encoder"
PROJECTOR_PREFIX = "image_encoder.projector"
TEXT_PREFIX = "text_decoder"


def _norm_shapes(prefix, dim, normalization):
    """LayerNorm has a weight and a bias, RMSNorm (Qwen2.5-VL's ViT and merger) a weight only."""
    out = [(f"{prefix}.weight", (dim,))]
    return out + ([(f"{prefix}.bias", (dim,))] if normalization == "LayerNorm" else [])


def vision_layer_shapes(v, prefix):
    e, f = v.hidden_size, v.ffn_hidden_size
    # the gated MLP (Qwen2.5-VL) holds concat(gate, up) in linear_fc1
    f1 = 2 * f if getattr(v, "gated_linear_unit", False) else f
    qkv = 3 * v.num_attention_heads * v.kv_channels
    return OrderedDict(_norm_shapes(f"{prefix}.input_layernorm", e, v.normalization) + [
        (f"{prefix}.self_attention.linear_qkv.weight", (qkv, e)),
        (f"{prefix}.self_attention.linear_qkv.bias", (qkv,)),
        (f"{prefix}.self_attention.linear_proj.weight", (e, v.num_attention_heads * v.kv_channels)),
        (f"{prefix}.self_attention.linear_proj.bias", (e,))] +
        _norm_shapes(f"{prefix}.pre_mlp_layernorm", e, v.normalization) + [
        (f"{prefix}.mlp.linear_fc1.weight", (f1, e)),
        (f"{prefix}.mlp.linear_fc1.bias", (f1,)),
        (f"{prefix}.mlp.linear_fc2.weight", (e, f)),
        (f"{prefix}.mlp.linear_fc2.bias", (e,)),
    ])


def text_layer_shapes(t, prefix):
    h, hd = t.hidden_size, t.kv_channels
    qkv = (t.num_attention_heads + 2 * t.num_query_groups) * hd
    return OrderedDict([
        (f"{prefix}.input_layernorm.weight", (h,)),
        (f"{prefix}.self_attention.linear_qkv.weight", (qkv, h)),
        (f"{prefix}.self_attention.linear_qkv.bias", (qkv,)),
        (f"{prefix}.self_attention.linear_proj.weight", (h, t.num_attention_heads * hd)),
        (f"{prefix}.pre_mlp_layernorm.weight", (h,)),
        (f"{prefix}.mlp.linear_fc1.weight", (2 * t.ffn_hidden_size, h)),
        (f"{prefix}.mlp.linear_fc2.weight", (h, t.ffn_hidden_size)),
    ])


def mm_param_shapes(cfg):
    """OrderedDict name -> shape tuple for the whole model, in construction order."""
    v, p, t = cfg.vision, cfg.projector, cfg.text
    shapes = OrderedDict()
    shapes[f"{VISION_PREFIX}.patch_embed.proj.weight"] = (
        v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    for i in range(v.num_layers):
        shapes.update(vision_layer_shapes(v, f"{VISION_PREFIX}.blocks.layers.{i}"))
    shapes.update(_norm_shapes(f"{PROJECTOR_PREFIX}.layernorm", p.input_size, p.normalization))
    merged = p.input_size * v.spatial_merge_size ** 2
    shapes[f"{PROJECTOR_PREFIX}.encoder.linear_fc1.weight"] = (p.ffn_hidden_size, merged)
    shapes[f"{PROJECTOR_PREFIX}.encoder.linear_fc1.bias"] = (p.ffn_hidden_size,)
    shapes[f"{PROJECTOR_PREFIX}.encoder.linear_fc2.weight"] = (p.hidden_size, p.ffn_hidden_size)
    shapes[f"{PROJECTOR_PREFIX}.encoder.linear_fc2.bias"] = (p.hidden_size,)
    shapes[f"{TEXT_PREFIX}.embedding.word_embeddings.weight"] = (t.vocab_size, t.hidden_size)
    for i in range(t.num_layers):
        shapes.update(text_layer_shapes(t, f"{TEXT_PREFIX}.decoder.layers.{i}"))
    shapes[f"{TEXT_PREFIX}.decoder.final_layernorm.weight"] = (t.hidden_size,)
    if not t.tied:
        shapes[f"{TEXT_PREFIX}.output_layer.weight"] = (t.vocab_size, t.hidden_size)
    return shapes


def param_count(cfg):
    """Total number of parameters (tied embeddings counted once, as HF does)."""
    total = 0
    for shape in mm_param_shapes(cfg).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
