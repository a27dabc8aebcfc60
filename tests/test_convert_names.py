"""HF reading and HF <-> MM names/fusions (tp1, pp1): exact round trips and layout facts."""
import json
import os

import ml_dtypes
import numpy as np
import pytest

from mindspeed_ms.checkpoint.hf_io import CheckpointError, HFCheckpoint, load_hf_state_dict
from mindspeed_ms.checkpoint.names import (ConversionError, Dims, hf_to_mm_state_dict, mm_to_hf_state_dict)
from mindspeed_ms.checkpoint.safetensors_io import save_safetensors
from test_convert_fixtures import make_tiny_hf, random_hf_state_dict, tiny_hf_config


def bits(a):
    a = np.ascontiguousarray(a)
    return a.dtype.str if a.dtype != ml_dtypes.bfloat16 else "bf16", a.shape, a.tobytes()


def assert_same(a: dict, b: dict):
    assert list(sorted(a)) == list(sorted(b))
    for k in a:
        assert bits(a[k]) == bits(b[k]), k


@pytest.mark.parametrize("shards", [1, 3])
def test_load_hf_matches_safetensors_library(tmp_path, shards):
    cfg, sd = make_tiny_hf(tmp_path, shards=shards)
    got = load_hf_state_dict(tmp_path)
    assert_same(got, sd)
    assert got["model.norm.weight"].dtype == ml_dtypes.bfloat16
    # the reference reader (safetensors' own torch API) sees the same bytes in our files
    st = pytest.importorskip("safetensors.torch")
    torch = pytest.importorskip("torch")
    ref = {}
    for f in sorted(os.listdir(tmp_path)):
        if f.endswith(".safetensors"):
            ref.update(st.load_file(str(tmp_path / f)))
    assert sorted(ref) == sorted(got)
    for k, t in ref.items():
        assert t.dtype == torch.bfloat16
        assert t.view(torch.int16).numpy().tobytes() == got[k].tobytes(), k


def test_load_reads_files_written_by_safetensors_library(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    tensors = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.arange(6, dtype=torch.int64).view(2, 3),
               "c": torch.randn(5, dtype=torch.float16), "d": torch.tensor([True, False])}
    st.save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    got = load_hf_state_dict(tmp_path)
    assert got["a"].dtype == ml_dtypes.bfloat16
    assert got["a"].tobytes() == tensors["a"].view(torch.int16).numpy().tobytes()
    np.testing.assert_array_equal(got["b"], tensors["b"].numpy())
    np.testing.assert_array_equal(got["c"], tensors["c"].numpy())
    np.testing.assert_array_equal(got["d"], tensors["d"].numpy())


@pytest.mark.parametrize("tie", [False, True])
def test_hf_mm_hf_round_trip_is_bitwise(tie):
    cfg = tiny_hf_config(tie=tie)
    sd = random_hf_state_dict(cfg)
    mm = hf_to_mm_state_dict(sd, cfg)
    assert ("text_decoder.output_layer.weight" in mm) == (not tie)
    assert_same(mm_to_hf_state_dict(mm, cfg), sd)
    # fp32 too
    sd32 = random_hf_state_dict(cfg, np.float32, seed=3)
    assert_same(mm_to_hf_state_dict(hf_to_mm_state_dict(sd32, cfg), cfg), sd32)


def test_tied_pipeline_copy_of_embedding():
    cfg = tiny_hf_config(tie=True)
    sd = random_hf_state_dict(cfg)
    mm = hf_to_mm_state_dict(sd, cfg, add_tied_output=True)
    assert bits(mm["text_decoder.output_layer.weight"]) == bits(sd["model.embed_tokens.weight"])
    assert "lm_head.weight" not in mm_to_hf_state_dict(mm, cfg)


def test_new_transformers_names_are_accepted():
    cfg = tiny_hf_config()
    sd = random_hf_state_dict(cfg)
    new = {}
    for k, v in sd.items():
        if k.startswith("model."):
            k = "model.language_model." + k[len("model."):]
        elif k.startswith("visual."):
            k = "model." + k
        new[k] = v
    assert_same(hf_to_mm_state_dict(new, cfg), hf_to_mm_state_dict(sd, cfg))


def test_mm_names_and_layout_facts():
    cfg = tiny_hf_config()
    d = Dims.from_hf_config(cfg)
    sd = random_hf_state_dict(cfg, np.float32)
    mm = hf_to_mm_state_dict(sd, cfg)
    L = "text_decoder.decoder.layers.2."
    qkv = mm[L + "self_attention.linear_qkv.weight"]
    bias = mm[L + "self_attention.linear_qkv.bias"]
    hd, qpg = d.head_dim, d.heads // d.kv_heads
    q, k, v = (sd[f"model.layers.2.self_attn.{n}_proj.weight"] for n in "qkv")
    qb, kb, vb = (sd[f"model.layers.2.self_attn.{n}_proj.bias"] for n in "qkv")
    rows = (qpg + 2) * hd
    for g in range(d.kv_heads):
        blk, bb = qkv[g * rows:(g + 1) * rows], bias[g * rows:(g + 1) * rows]
        for j in range(qpg):  # query heads g*qpg .. g*qpg+qpg-1 come first in group g
            h = g * qpg + j
            np.testing.assert_array_equal(blk[j * hd:(j + 1) * hd], q[h * hd:(h + 1) * hd])
            np.testing.assert_array_equal(bb[j * hd:(j + 1) * hd], qb[h * hd:(h + 1) * hd])
        np.testing.assert_array_equal(blk[qpg * hd:(qpg + 1) * hd], k[g * hd:(g + 1) * hd])
        np.testing.assert_array_equal(blk[(qpg + 1) * hd:], v[g * hd:(g + 1) * hd])
        np.testing.assert_array_equal(bb[(qpg + 1) * hd:], vb[g * hd:(g + 1) * hd])
        np.testing.assert_array_equal(bb[qpg * hd:(qpg + 1) * hd], kb[g * hd:(g + 1) * hd])
    fc1 = mm[L + "mlp.linear_fc1.weight"]
    np.testing.assert_array_equal(fc1[:d.ffn], sd["model.layers.2.mlp.gate_proj.weight"])
    np.testing.assert_array_equal(fc1[d.ffn:], sd["model.layers.2.mlp.up_proj.weight"])
    np.testing.assert_array_equal(mm[L + "pre_mlp_layernorm.weight"], sd["model.layers.2.post_attention_layernorm.weight"])
    # ViT: per head [q_h; k_h; v_h] from HF [Q; K; V]
    V = "image_encoder.encoder.blocks.layers.1.self_attention.linear_qkv."
    vd, vhd = d.vit_dim, d.vit_head_dim
    for p in ("weight", "bias"):
        hf = sd[f"visual.blocks.1.attn.qkv.{p}"]
        got = mm[V + p]
        for h in range(d.vit_heads):
            for j in range(3):
                np.testing.assert_array_equal(got[(3 * h + j) * vhd:(3 * h + j + 1) * vhd],
                                              hf[j * vd + h * vhd:j * vd + (h + 1) * vhd])
    assert list(mm)[0] == "image_encoder.encoder.patch_embed.proj.weight"
    assert list(mm)[-1] == "text_decoder.output_layer.weight"
    assert "image_encoder.projector.encoder.linear_fc2.bias" in mm
    assert "text_decoder.decoder.final_layernorm.weight" in mm


def test_vit_qkv_fusion_matches_per_head_attention():
    """Functional check: q/k/v of head h computed from the MM fused rows equal HF's."""
    cfg = tiny_hf_config()
    d = Dims.from_hf_config(cfg)
    sd = random_hf_state_dict(cfg, np.float32)
    mm = hf_to_mm_state_dict(sd, cfg)
    x = np.random.default_rng(1).standard_normal((5, d.vit_dim)).astype(np.float32)
    w, b = sd["visual.blocks.0.attn.qkv.weight"], sd["visual.blocks.0.attn.qkv.bias"]
    hf_q, hf_k, hf_v = np.split(x @ w.T + b, 3, axis=-1)  # how HF's VisionAttention splits
    mw = mm["image_encoder.encoder.blocks.layers.0.self_attention.linear_qkv.weight"]
    mb = mm["image_encoder.encoder.blocks.layers.0.self_attention.linear_qkv.bias"]
    y = (x @ mw.T + mb).reshape(5, d.vit_heads, 3, d.vit_head_dim)  # how Megatron splits
    np.testing.assert_array_equal(y[:, :, 0].reshape(5, -1), hf_q)
    np.testing.assert_array_equal(y[:, :, 1].reshape(5, -1), hf_k)
    np.testing.assert_array_equal(y[:, :, 2].reshape(5, -1), hf_v)


def test_unknown_or_missing_names_are_clear_errors():
    cfg = tiny_hf_config()
    sd = random_hf_state_dict(cfg)
    bad = dict(sd, **{"model.layers.0.self_attn.rotary.inv_freq": np.zeros(2, np.float32)})
    with pytest.raises(ConversionError, match="rotary.inv_freq"):
        hf_to_mm_state_dict(bad, cfg)
    sd.pop("model.layers.3.self_attn.k_proj.weight")
    with pytest.raises(ConversionError, match="model.layers.3.self_attn.k_proj.weight"):
        hf_to_mm_state_dict(sd, cfg)
    wrong = dict(cfg, num_key_value_heads=2)
    with pytest.raises(ConversionError, match="kv heads 2"):
        hf_to_mm_state_dict(random_hf_state_dict(cfg), wrong)


def test_hf_dir_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        HFCheckpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        HFCheckpoint(tmp_path / "empty")
    make_tiny_hf(tmp_path / "sh", shards=3)
    os.remove(tmp_path / "sh" / "model-00002-of-00003.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors.*missing"):
        HFCheckpoint(tmp_path / "sh")
    make_tiny_hf(tmp_path / "tr")
    p = tmp_path / "tr" / "model.safetensors"
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match="truncated"):
        HFCheckpoint(tmp_path / "tr")
    # index lists a tensor that its shard does not hold
    make_tiny_hf(tmp_path / "ix", shards=2)
    idx = json.loads((tmp_path / "ix" / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.layers.99.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / "ix" / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="model.layers.99.mlp.up_proj.weight"):
        HFCheckpoint(tmp_path / "ix")


def test_safetensors_writer_scalars_and_empty(tmp_path):
    from mindspeed_ms.checkpoint.safetensors_io import read_safetensors
    t = {"s": np.array(3.5, np.float32), "e": np.zeros((0, 4), ml_dtypes.bfloat16),
         "v": np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2]}
    save_safetensors(t, tmp_path / "x.safetensors")
    got = read_safetensors(tmp_path / "x.safetensors")
    for k in t:
        assert got[k].dtype == t[k].dtype and got[k].shape == t[k].shape
        np.testing.assert_array_equal(got[k].astype(np.float64), np.asarray(t[k]).astype(np.float64))
