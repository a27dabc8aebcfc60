"""mm-convert Qwen2_5_VLConverter on a random tiny HF Qwen2.5-VL checkpoint (transformers'
save_pretrained): HF -> MM -> HF bitwise for tp 1/2 and pipeline layouts (the README's 7B
[[1,10,10,7]] / [[32,0,0,0]] and 72B tp 2 8-stage layouts scaled down, a VPP one), resplit bitwise,
MindSpeed-MM's names and TP splits checked tensor by tensor in the rank files."""
import numpy as np
import pytest

from helpers.hf_tiny_qwen2_5 import make_tiny_hf_checkpoint
from mindspeed_ms.checkpoint import cli
from mindspeed_ms.checkpoint.converter import hf_to_mm, mm_to_hf, resplit
from mindspeed_ms.checkpoint.hf_io import load_hf_config, load_hf_state_dict
from mindspeed_ms.checkpoint.mm_io import MMCheckpointReader, read_mm_checkpoint
from mindspeed_ms.checkpoint.names import hf_to_mm_state_dict
from mindspeed_ms.checkpoint.pp_split import ParallelLayout
from test_convert_layout import _np, _torch_load, assert_same

LLM_LAYERS, VIT_LAYERS, VIT_FFN, VIT_DIM, VOCAB = 8, 3, 48, 32, 1024
LAYOUTS = [
    (1, [[8]], [[3]]),
    (2, [[8]], [[3]]),
    (1, [[1, 3, 3, 1]], [[3, 0, 0, 0]]),                                       # 7B [[1,10,10,7]] / [[32,0,0,0]]
    (2, [[1, 1, 1, 1, 1, 1, 1, 1]], [[3, 0, 0, 0, 0, 0, 0, 0]]),               # 72B tp 2, 8 stages
    (2, [[0, 1], [3, 4]], [[3, 0], [0, 0]]),                                   # pp 2 x vpp 2
]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    d = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("q25") / "hf", "fullatt_ends", max_shard_size="600KB",
                                text_config=dict(hidden_size=64, intermediate_size=112, num_hidden_layers=LLM_LAYERS,
                                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                                 tie_word_embeddings=False,
                                                 rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
                                tie_word_embeddings=False)
    return d, load_hf_config(d), load_hf_state_dict(d)


@pytest.mark.parametrize("tp,llm,vit", LAYOUTS)
def test_hf_mm_hf_bitwise(tmp_path, hf, tp, llm, vit):
    hf_dir, cfg, sd = hf
    hf_to_mm(hf_dir, tmp_path / "mm", llm, vit, tp, progress=False, model_type="qwen2_5_vl")
    assert MMCheckpointReader(tmp_path / "mm").layout == ParallelLayout.build(tp, llm, vit)
    mm_to_hf(tmp_path / "mm", hf_dir, tmp_path / "back", llm, vit, tp, progress=False, model_type="qwen2_5_vl")
    assert_same(load_hf_state_dict(tmp_path / "back"), sd)
    merged, _ = read_mm_checkpoint(tmp_path / "mm", hf_config=cfg)
    assert_same(merged, hf_to_mm_state_dict(sd, cfg))


def test_resplit_bitwise(tmp_path, hf):
    hf_dir, cfg, sd = hf
    (t72, l72, v72), (t7, l7, v7) = LAYOUTS[3], LAYOUTS[2]
    hf_to_mm(hf_dir, tmp_path / "a", l72, v72, t72, progress=False)
    resplit(tmp_path / "a", tmp_path / "b", l7, v7, t7, model_type="qwen2_5_vl", hf_dir=hf_dir, progress=False)
    hf_to_mm(hf_dir, tmp_path / "direct", l7, v7, t7, progress=False)
    a, b = MMCheckpointReader(tmp_path / "b"), MMCheckpointReader(tmp_path / "direct")
    assert a.layout == b.layout
    assert_same({k: a.get(k) for k in a.keys()}, {k: b.get(k) for k in b.keys()})
    resplit(tmp_path / "b", tmp_path / "c", l72, v72, t72, model_type="qwen2_5_vl", progress=False)
    mm_to_hf(tmp_path / "c", hf_dir, tmp_path / "back", progress=False)
    assert_same(load_hf_state_dict(tmp_path / "back"), sd)


def test_layout_facts_tensor_by_tensor(tmp_path, hf):
    """tp 2, the 7B-like layout: MindSpeed-MM's names, GLU ViT fc1 split, placements."""
    hf_dir, _, sd = hf
    f32 = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): v.astype(np.float32)
           for k, v in sd.items()}
    hf_to_mm(hf_dir, tmp_path / "mm", [[1, 3, 3, 1]], [[3, 0, 0, 0]], 2, progress=False)
    rel = tmp_path / "mm" / "release"
    n, e = VIT_FFN // 2, VIT_DIM
    for r in range(2):
        m = [{k: _np(v) for k, v in _torch_load(rel / f"mp_rank_{r:02d}_{p:03d}" / "model_optim_rng.pt")["model"].items()}
             for p in range(4)]
        vit = "image_encoder.encoder.blocks.layers"
        # gated ViT MLP: fc1 = concat(gate[r], up[r]) for weight and bias, fc2 = down_proj's columns r
        for p in ("weight", "bias"):
            fc1 = m[0][f"{vit}.1.mlp.linear_fc1.{p}"]
            np.testing.assert_array_equal(fc1[:n], f32[f"visual.blocks.1.mlp.gate_proj.{p}"][r * n:(r + 1) * n])
            np.testing.assert_array_equal(fc1[n:], f32[f"visual.blocks.1.mlp.up_proj.{p}"][r * n:(r + 1) * n])
        np.testing.assert_array_equal(m[0][f"{vit}.1.mlp.linear_fc2.weight"],
                                      f32["visual.blocks.1.mlp.down_proj.weight"][:, r * n:(r + 1) * n])
        np.testing.assert_array_equal(m[0][f"{vit}.1.mlp.linear_fc2.bias"], f32["visual.blocks.1.mlp.down_proj.bias"])
        # RMSNorms: weights only, replicated
        np.testing.assert_array_equal(m[0][f"{vit}.2.input_layernorm.weight"], f32["visual.blocks.2.norm1.weight"])
        np.testing.assert_array_equal(m[0][f"{vit}.2.pre_mlp_layernorm.weight"], f32["visual.blocks.2.norm2.weight"])
        np.testing.assert_array_equal(m[0]["image_encoder.projector.layernorm.weight"], f32["visual.merger.ln_q.weight"])
        assert not any(k.endswith("layernorm.bias") for k in m[0])
        # ViT qkv: whole heads per rank, [q_h; k_h; v_h]
        hd = e // 2
        np.testing.assert_array_equal(m[0][f"{vit}.0.self_attention.linear_qkv.weight"],
                                      np.concatenate([f32["visual.blocks.0.attn.qkv.weight"][t * e + r * hd:t * e + (r + 1) * hd]
                                                      for t in range(3)]))
        # placement: stage 0 = ViT + projector + embedding + LLM layer 0; stages 1, 2 = 3 layers; 3 = 1 + head
        assert "text_decoder.embedding.word_embeddings.weight" in m[0]
        assert [sorted({k.split(".")[3] for k in s if k.startswith("text_decoder.decoder.layers.")}) for s in m] == \
            [["0"], ["0", "1", "2"], ["0", "1", "2"], ["0"]]
        assert not any(k.startswith("image_encoder") for s in m[1:] for k in s)
        assert "text_decoder.output_layer.weight" in m[3] and "text_decoder.decoder.final_layernorm.weight" in m[3]
        np.testing.assert_array_equal(m[2]["text_decoder.decoder.layers.2.mlp.linear_fc2.weight"],
                                      f32["model.layers.6.mlp.down_proj.weight"][:, r * 56:(r + 1) * 56])


def test_cli_converters(tmp_path, hf, capsys):
    hf_dir, _, sd = hf
    args = ["hf_to_mm", "--cfg.mm_dir", str(tmp_path / "mm"), "--cfg.hf_config.hf_dir", str(hf_dir),
            "--cfg.parallel_config.llm_pp_layers", "[[1,3,3,1]]", "--cfg.parallel_config.vit_pp_layers", "[[3,0,0,0]]",
            "--cfg.parallel_config.tp_size", "2", "--cfg.progress", "false"]
    assert cli.main(["Qwen2VLConverter"] + args) == 2
    assert "holds a 'qwen2_5_vl' model (config.json model_type) but the converter is for 'qwen2_vl'" in capsys.readouterr().err
    assert not (tmp_path / "mm").exists()
    assert cli.main(["Qwen2_5_VLConverter"] + args) == 0
    assert cli.main(["Qwen2_5_VLConverter", "mm_to_hf", "--cfg.save_hf_dir", str(tmp_path / "back"), "--cfg.mm_dir",
                     str(tmp_path / "mm"), "--cfg.hf_config.hf_dir", str(hf_dir), "--cfg.progress", "false"]) == 0
    assert_same(load_hf_state_dict(tmp_path / "back"), sd)
