"""Tiny random HF Qwen2-VL checkpoints for tests (transformers is a test-only dependency).

`make_tiny_hf_checkpoint(out_dir, preset)` writes config.json + safetensors (sharded on request)
with every parameter randomised (norm weights and biases too, so a wrong fusion or a swapped
norm cannot hide behind ones/zeros). `load_hf_reference(out_dir)` loads it back as the fp32 eager
transformers model used as the reference.

Presets:
- "tied":   LLM 2 layers x 64, heads 4 / kv 2, mrope [2, 3, 3], tied embeddings, real vocab 151936
            and real special-token ids; ViT 2 layers x 32, 2 heads.
- "untied": LLM 2 layers x 64, heads 8 / kv 2 (head_dim 8), mrope [1, 1, 2], untied output,
            vocab 1024 with small special-token ids (900+); ViT 2 layers x 48, 3 heads.
"""
import os

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

PRESETS = {
    "tied": dict(
        text_config=dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=4, hidden_size=64, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True,
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653),
    "untied": dict(
        text_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=1024, rms_norm_eps=1e-6, rope_theta=10000.0,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=2, embed_dim=48, num_heads=3, mlp_ratio=2, hidden_size=64, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=False,
        image_token_id=1001, video_token_id=1002, vision_start_token_id=1000, vision_end_token_id=1003),
}


def tiny_hf_config(preset="tied", **overrides):
    kwargs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[preset].items()}
    kwargs.update(overrides)
    cfg = Qwen2VLConfig(**kwargs)
    cfg._attn_implementation = "eager"
    return cfg


def randomize_(model, seed=0, std=0.08):
    """Every parameter random: weights N(0, std), norm weights 1 + N(0, 0.1), biases N(0, 0.05)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.05 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                p.copy_(std * noise)
    return model


def save_random_checkpoint(model, out_dir, seed=0, max_shard_size=None):
    """Randomise `model` (fp32, `randomize_`) and save_pretrained it as safetensors into `out_dir`."""
    model = model.float()
    randomize_(model, seed)
    os.makedirs(out_dir, exist_ok=True)
    kwargs = {"safe_serialization": True}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(out_dir, **kwargs)
    return str(out_dir)


def load_eager_reference(model_cls, out_dir):
    """`model_cls` from `out_dir`, fp32, eager attention, eval mode."""
    return model_cls.from_pretrained(out_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()


def make_tiny_hf_checkpoint(out_dir, preset="tied", seed=0, max_shard_size=None, **overrides):
    """Write a random tiny HF Qwen2-VL checkpoint into `out_dir`; returns `out_dir`.
    `max_shard_size` (e.g. "300KB") writes a sharded checkpoint with model.safetensors.index.json."""
    torch.manual_seed(seed)
    return save_random_checkpoint(Qwen2VLForConditionalGeneration(tiny_hf_config(preset, **overrides)), out_dir,
                                  seed, max_shard_size)


def load_hf_reference(out_dir):
    """The transformers model from `out_dir`, fp32, eager attention, eval mode."""
    return load_eager_reference(Qwen2VLForConditionalGeneration, out_dir)
