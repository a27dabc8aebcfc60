"""Tiny random HF Qwen2.5-VL checkpoints for tests (transformers is a test-only dependency).

Presets (every parameter random, as `hf_tiny.randomize_`):
- "fullatt_ends": LLM 2 x 64, heads 4 / kv 2, mrope [2, 3, 3], tied, real vocab 151936 and token ids;
  ViT 3 layers x 32, 2 heads, gated MLP 48, window 112 px (4x4 merged patches), full attention in
  layers 0 and 2, tokens_per_second 2.
- "window_odd": LLM 2 x 64, heads 8 / kv 2, mrope [1, 1, 2], untied, vocab 1024 (token ids 1000+);
  ViT 2 layers x 48, 3 heads, gated MLP 40, window 84 px (3x3 merged patches: windows that do not
  divide the test grids), full attention in layer 1, tokens_per_second 4.
"""
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from helpers.hf_tiny import load_eager_reference, save_random_checkpoint

PRESETS = {
    "fullatt_ends": dict(
        text_config=dict(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                           in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[0, 2], tokens_per_second=2, hidden_act="silu"),
        tie_word_embeddings=True,
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653),
    "window_odd": dict(
        text_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=1024, rms_norm_eps=1e-6, rope_theta=10000.0,
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=2, hidden_size=48, intermediate_size=40, num_heads=3, out_hidden_size=64,
                           in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=84, fullatt_block_indexes=[1], tokens_per_second=4, hidden_act="silu"),
        tie_word_embeddings=False,
        image_token_id=1001, video_token_id=1002, vision_start_token_id=1000, vision_end_token_id=1003),
}


def tiny_hf_config(preset="fullatt_ends", **overrides):
    kwargs = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[preset].items()}
    kwargs.update(overrides)
    cfg = Qwen2_5_VLConfig(**kwargs)
    cfg._attn_implementation = "eager"
    return cfg


def make_tiny_hf_checkpoint(out_dir, preset="fullatt_ends", seed=0, max_shard_size=None, **overrides):
    """Write a random tiny HF Qwen2.5-VL checkpoint into `out_dir`; returns `out_dir`."""
    torch.manual_seed(seed)
    return save_random_checkpoint(Qwen2_5_VLForConditionalGeneration(tiny_hf_config(preset, **overrides)), out_dir,
                                  seed, max_shard_size)


def load_hf_reference(out_dir):
    """The transformers model from `out_dir`, fp32, eager attention, eval mode."""
    return load_eager_reference(Qwen2_5_VLForConditionalGeneration, out_dir)
