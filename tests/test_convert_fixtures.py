"""Tiny random Qwen2-VL checkpoints in HF format for the conversion tests (numpy + safetensors only),
and a check that their tensor names and shapes are exactly those of transformers' Qwen2-VL."""
import json
import os

import ml_dtypes
import numpy as np
import pytest

from mindspeed_ms.checkpoint.safetensors_io import save_safetensors


def tiny_hf_config(layers=6, vit_depth=4, heads=8, kv_heads=4, hidden=32, tie=False, vocab=64):
    """A real transformers Qwen2VLConfig key set, tiny sizes."""
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": hidden, "intermediate_size": 48, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 512,
        "hidden_act": "silu", "tie_word_embeddings": tie, "torch_dtype": "bfloat16",
        "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 0]},
        "vision_start_token_id": 60, "vision_end_token_id": 61, "vision_token_id": 62,
        "image_token_id": 62, "video_token_id": 63, "bos_token_id": 1, "eos_token_id": 2,
        "vision_config": {"depth": vit_depth, "embed_dim": 16, "num_heads": 4, "mlp_ratio": 2,
                          "hidden_size": hidden, "in_channels": 3, "patch_size": 14,
                          "spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_act": "quick_gelu"},
    }


def hf_shapes(cfg):
    """{name: shape} of the HF Qwen2-VL state dict as stored on disk."""
    v = cfg["vision_config"]
    d, vh = v["embed_dim"], int(v["embed_dim"] * v["mlp_ratio"])
    merged = d * v["spatial_merge_size"] ** 2
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = H // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    s = {"visual.patch_embed.proj.weight": (d, v["in_channels"], v["temporal_patch_size"], v["patch_size"], v["patch_size"])}
    for i in range(v["depth"]):
        b = f"visual.blocks.{i}."
        s.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                  b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                  b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                  b + "mlp.fc1.weight": (vh, d), b + "mlp.fc1.bias": (vh,),
                  b + "mlp.fc2.weight": (d, vh), b + "mlp.fc2.bias": (d,)})
    s.update({"visual.merger.ln_q.weight": (d,), "visual.merger.ln_q.bias": (d,),
              "visual.merger.mlp.0.weight": (merged, merged), "visual.merger.mlp.0.bias": (merged,),
              "visual.merger.mlp.2.weight": (H, merged), "visual.merger.mlp.2.bias": (H,),
              "model.embed_tokens.weight": (V, H)})
    for i in range(cfg["num_hidden_layers"]):
        b = f"model.layers.{i}."
        s.update({b + "input_layernorm.weight": (H,), b + "post_attention_layernorm.weight": (H,),
                  b + "self_attn.q_proj.weight": (q, H), b + "self_attn.q_proj.bias": (q,),
                  b + "self_attn.k_proj.weight": (kv, H), b + "self_attn.k_proj.bias": (kv,),
                  b + "self_attn.v_proj.weight": (kv, H), b + "self_attn.v_proj.bias": (kv,),
                  b + "self_attn.o_proj.weight": (H, q),
                  b + "mlp.gate_proj.weight": (I, H), b + "mlp.up_proj.weight": (I, H),
                  b + "mlp.down_proj.weight": (H, I)})
    s["model.norm.weight"] = (H,)
    if not cfg.get("tie_word_embeddings"):
        s["lm_head.weight"] = (V, H)
    return s


def random_hf_state_dict(cfg, dtype=ml_dtypes.bfloat16, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape, dtype=np.float32).astype(dtype) for k, shape in hf_shapes(cfg).items()}


def write_hf_dir(path, cfg, sd, shards=1, extra_files=True):
    """Write an HF model directory: config.json, one file or `shards` shards + index, side files."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    if extra_files:
        for name, body in (("tokenizer_config.json", '{"model_max_length": 512}'),
                           ("preprocessor_config.json", '{"patch_size": 14}'),
                           ("generation_config.json", '{"do_sample": false}')):
            with open(os.path.join(path, name), "w") as f:
                f.write(body)
    names = list(sd)
    if shards == 1:
        save_safetensors(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return path
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in names[s * per:(s + 1) * per]}
        save_safetensors(part, os.path.join(path, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
        total += sum(v.nbytes for v in part.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return path


def make_tiny_hf(path, shards=1, dtype=ml_dtypes.bfloat16, seed=0, **cfg_kw):
    cfg = tiny_hf_config(**cfg_kw)
    sd = random_hf_state_dict(cfg, dtype, seed)
    write_hf_dir(str(path), cfg, sd, shards)
    return cfg, sd


@pytest.mark.parametrize("tie", [False, True])
def test_fixture_matches_transformers_qwen2vl(tie):
    """The fixture's names/shapes are those of transformers' Qwen2-VL saved to disk."""
    transformers = pytest.importorskip("transformers")
    cfg = tiny_hf_config(tie=tie)
    hf_cfg = transformers.Qwen2VLConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    with __import__("torch").device("meta"):
        model = transformers.Qwen2VLForConditionalGeneration(hf_cfg)
    # save_pretrained writes the pre-4.52 names (model.*, visual.*) through this reverse mapping.
    rev = {v: k for k, v in model._checkpoint_conversion_mapping.items()}
    import re
    names = {}
    for k, p in model.state_dict().items():
        for pat, rep in rev.items():
            k2 = re.sub(pat, re.sub(r"\(.*\)", "", rep.lstrip("^")), k)
            if k2 != k:
                k = k2
                break
        names[k] = tuple(p.shape)
    if tie:
        names.pop("lm_head.weight")
    assert names == hf_shapes(cfg)
