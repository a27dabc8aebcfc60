"""model.json / HF config.json loading, derived fields, errors, and parameter shapes vs HF."""
import json
import os

import pytest
import torch
from transformers import Qwen2VLConfig as HFConfig
from transformers import Qwen2VLForConditionalGeneration as HFModel

from mindspeed_ms.config.model_config import (ModelConfigError, config_from_hf, config_to_hf, load_model_json,
                                              model_config_from_dict)
from mindspeed_ms.config.param_shapes import mm_param_shapes, param_count

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")
SIZES = {"2b": (1536, 28, 12, 2, 151936, True), "7b": (3584, 28, 28, 4, 152064, False),
         "72b": (8192, 80, 64, 8, 152064, False)}


def _json(name):
    with open(os.path.join(EX, name)) as f:
        return json.load(f)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_real_size_files(size):
    cfg = load_model_json(os.path.join(EX, f"model_{size}.json"))
    hidden, layers, heads, groups, vocab, tied = SIZES[size]
    t = cfg.text
    assert (t.hidden_size, t.num_layers, t.num_attention_heads, t.num_query_groups, t.vocab_size, t.tied) == \
        (hidden, layers, heads, groups, vocab, tied)
    assert t.kv_channels == 128 and sum(t.pipeline_num_layers) == layers
    assert cfg.vision.num_layers == 32 and cfg.vision.hidden_size == 1280 and cfg.vision.kv_channels == 80
    assert cfg.projector.hidden_size == hidden and cfg.video_token_id == 151656


def test_derived_fields_filled_as_mindspeed_mm():
    data = _json("model_tiny.json")
    for key in ("kv_channels", "ffn_hidden_size", "num_query_groups"):
        data["text_decoder"].pop(key, None)
    data["text_decoder"]["mrope_section"] = [4, 2, 2]
    cfg = model_config_from_dict(data, "x.json")
    assert cfg.text.kv_channels == 64 // 4 and cfg.text.ffn_hidden_size == 4 * 64
    assert cfg.text.num_query_groups == cfg.text.num_attention_heads


def test_unknown_key_names_key_and_file(tmp_path):
    data = _json("model_tiny.json")
    data["text_decoder"]["num_layer"] = 3
    path = tmp_path / "model_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"model_bad\.json: unknown key 'text_decoder\.num_layer'"):
        load_model_json(path)
    data = _json("model_tiny.json")
    data["image_encoder"]["vision_encoder"]["patch_sz"] = 14
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"model_bad\.json: unknown key 'image_encoder\.vision_encoder\.patch_sz'"):
        load_model_json(path)
    data = _json("model_tiny.json")
    data["foo"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"model_bad\.json: unknown key 'foo'"):
        load_model_json(path)


def test_wrong_values_name_key_and_file(tmp_path):
    path = tmp_path / "m.json"
    data = _json("model_tiny.json")
    data["text_decoder"]["num_layers"] = "2"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"m\.json: key 'text_decoder\.num_layers' has value '2'"):
        load_model_json(path)
    data = _json("model_tiny.json")
    data["text_decoder"]["mrope_section"] = [16, 24, 24]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"m\.json: key 'text_decoder\.mrope_section'.*kv_channels/2 \(8\)"):
        load_model_json(path)
    data = _json("model_tiny.json")
    data["text_decoder"]["num_query_groups"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"num_query_groups' \(3\) must divide num_attention_heads \(4\)"):
        load_model_json(path)
    data = _json("model_tiny.json")
    data["text_decoder"]["pipeline_num_layers"] = [1, 2]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match=r"pipeline_num_layers.*sum to num_layers \(2\)"):
        load_model_json(path)


def _hf_meta_model(hf_dict):
    cfg = HFConfig(**hf_dict)
    with torch.device("meta"):
        return HFModel(cfg)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_param_count_and_shapes_match_hf_meta_model(size):
    cfg = load_model_json(os.path.join(EX, f"model_{size}.json"))
    hf = _hf_meta_model(config_to_hf(cfg))
    hf_count = sum(p.numel() for p in hf.parameters())  # tied weights are one Parameter
    assert param_count(cfg) == hf_count
    shapes = mm_param_shapes(cfg)
    hfp = dict(hf.named_parameters())
    v, t = cfg.vision, cfg.text
    hd, q, kv = t.kv_channels, t.num_attention_heads, t.num_query_groups
    # the documented MM shapes, derived from the HF tensors and the fusion rules
    for i in (0, v.num_layers - 1):
        pre = f"image_encoder.encoder.blocks.layers.{i}"
        assert shapes[f"{pre}.self_attention.linear_qkv.weight"] == tuple(hfp[f"model.visual.blocks.{i}.attn.qkv.weight"].shape)
        assert shapes[f"{pre}.mlp.linear_fc1.weight"] == tuple(hfp[f"model.visual.blocks.{i}.mlp.fc1.weight"].shape)
        assert shapes[f"{pre}.mlp.linear_fc2.weight"] == tuple(hfp[f"model.visual.blocks.{i}.mlp.fc2.weight"].shape)
    for i in (0, t.num_layers - 1):
        pre = f"text_decoder.decoder.layers.{i}"
        hq = f"model.language_model.layers.{i}.self_attn"
        rows = sum(hfp[f"{hq}.{n}_proj.weight"].shape[0] for n in "qkv")
        assert shapes[f"{pre}.self_attention.linear_qkv.weight"] == (rows, t.hidden_size) == ((q + 2 * kv) * hd, t.hidden_size)
        assert shapes[f"{pre}.self_attention.linear_qkv.bias"] == (rows,)
        mlp = f"model.language_model.layers.{i}.mlp"
        assert shapes[f"{pre}.mlp.linear_fc1.weight"] == (2 * hfp[f"{mlp}.gate_proj.weight"].shape[0], t.hidden_size)
        assert shapes[f"{pre}.mlp.linear_fc2.weight"] == tuple(hfp[f"{mlp}.down_proj.weight"].shape)
    assert shapes["image_encoder.encoder.patch_embed.proj.weight"] == tuple(hfp["model.visual.patch_embed.proj.weight"].shape)
    assert shapes["image_encoder.projector.encoder.linear_fc1.weight"] == tuple(hfp["model.visual.merger.mlp.0.weight"].shape)
    assert shapes["image_encoder.projector.encoder.linear_fc2.weight"] == tuple(hfp["model.visual.merger.mlp.2.weight"].shape)
    assert shapes["text_decoder.embedding.word_embeddings.weight"] == tuple(hfp["model.language_model.embed_tokens.weight"].shape)
    assert ("text_decoder.output_layer.weight" in shapes) == (not t.tied)
    # HF-side totals for the record (2B ~2.2B, 7B ~8.3B, 72B ~73.4B)
    expect = {"2b": 2.21e9, "7b": 8.29e9, "72b": 73.4e9}[size]
    assert abs(param_count(cfg) - expect) / expect < 0.01


@pytest.mark.parametrize("size", sorted(SIZES))
def test_hf_round_trip(size):
    cfg = load_model_json(os.path.join(EX, f"model_{size}.json"))
    hf = config_to_hf(cfg)
    back = config_from_hf(hf)
    for sub in ("vision", "projector", "text"):
        a, b = getattr(cfg, sub), getattr(back, sub)
        for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels",
                    "num_query_groups", "vocab_size", "mrope_section", "rope_theta", "layernorm_epsilon",
                    "input_size", "patch_size", "spatial_merge_size", "temporal_patch_size", "tied"):
            if hasattr(a, key):
                assert getattr(a, key) == getattr(b, key), (sub, key)
    # and transformers reads our dict back to the same sizes
    h = HFConfig(**hf)
    assert h.text_config.num_key_value_heads == cfg.text.num_query_groups
    assert h.vision_config.embed_dim == cfg.vision.hidden_size


def test_config_from_hf_nested_text_config(tmp_path):
    hf = HFConfig(text_config={"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 1000,
                               "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]}, "rms_norm_eps": 1e-6},
                  vision_config={"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64})
    hf.save_pretrained(tmp_path)
    cfg = config_from_hf(str(tmp_path))
    assert (cfg.text.hidden_size, cfg.text.num_query_groups, cfg.text.mrope_section) == (64, 2, [2, 2, 4])
    assert (cfg.vision.num_layers, cfg.vision.hidden_size, cfg.vision.ffn_hidden_size) == (1, 32, 128)
    assert cfg.text.layernorm_epsilon == 1e-6 and cfg.text.vocab_size == 1000
