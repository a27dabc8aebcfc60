"""Qwen2.5-VL configuration: MindSpeed-MM's released model_*.json (shipped in
examples/mindspore/qwen2.5vl/) load through the family registry, their parameter counts equal HF
meta-device models of the released HF configs, HF config.json <-> model.json, clear key errors."""
import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from mindspeed_ms.config.model_config import ModelConfigError, config_from_hf, config_to_hf, load_model_json
from mindspeed_ms.config.param_shapes import param_count
from mindspeed_ms.config.qwen2_5vl_config import Qwen2_5VLConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples/mindspore/qwen2.5vl"
# the released HF configs' sizes (Qwen/Qwen2.5-VL-*-Instruct config.json), written independently
HF_SIZES = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, vit_ffn=3420),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, vit_ffn=3420),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, vit_ffn=3456),
    "72b": dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False, vit_ffn=3456),
}


def _hf_count(cfg):
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    return sum(p.numel() for p in model.parameters())


def _released_hf_config(size):
    s = dict(HF_SIZES[size])
    vit_ffn = s.pop("vit_ffn")
    vision = dict(depth=32, hidden_size=1280, intermediate_size=vit_ffn, num_heads=16, out_hidden_size=s["hidden_size"],
                  window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
    return Qwen2_5_VLConfig(vision_config=vision, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                            rms_norm_eps=1e-6, rope_theta=1000000.0, **s)


@pytest.mark.parametrize("size", ["3b", "7b", "32b", "72b"])
def test_parameter_counts_equal_hf(size):
    cfg = load_model_json(f"{EXAMPLES}/model_{size}.json")
    assert isinstance(cfg, Qwen2_5VLConfig) and cfg.model_id == "qwen2_5vl"
    assert param_count(cfg) == _hf_count(_released_hf_config(size))


@pytest.mark.parametrize("size", ["7b", "72b", "tiny"])
def test_hf_config_round_trip(size):
    cfg = load_model_json(f"{EXAMPLES}/model_{size}.json")
    hf = config_to_hf(cfg)
    assert hf["model_type"] == "qwen2_5_vl"
    back = config_from_hf(hf)
    assert isinstance(back, Qwen2_5VLConfig)
    for a, b in ((cfg.vision, back.vision), (cfg.text, back.text), (cfg.projector, back.projector)):
        for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads"):
            assert getattr(a, key) == getattr(b, key), key
    assert back.vision.window_attn_size == 112 and back.vision.fullatt_block_indexes == cfg.vision.fullatt_block_indexes
    assert back.vision.tokens_per_second == cfg.vision.tokens_per_second
    assert back.text.tied == cfg.text.tied and back.text.num_query_groups == cfg.text.num_query_groups
    # transformers reads it and builds a model of the same size
    assert _hf_count(Qwen2_5_VLConfig(**hf)) == param_count(cfg)


def _tiny(tmp_path, edit):
    data = json.load(open(f"{EXAMPLES}/model_tiny.json"))
    edit(data)
    p = tmp_path / "model.json"
    p.write_text(json.dumps(data))
    return str(p)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["image_encoder"]["vision_encoder"].update(window_attn_size=100),
     r"model\.json: key 'image_encoder\.vision_encoder\.window_attn_size' \(100\) must be a positive multiple of "
     r"patch_size \* spatial_merge_size \(28\)"),
    (lambda d: d["image_encoder"]["vision_encoder"].update(fullatt_block_indexes=[1, 4]),
     r"'image_encoder\.vision_encoder\.fullatt_block_indexes' \[1, 4\] must be layer numbers in \[0, 4\)"),
    (lambda d: d["text_decoder"].update(model_id="qwen2lm"),
     r"'text_decoder\.model_id' is 'qwen2lm'; this model family builds 'qwen2_5_lm'"),
    (lambda d: d["image_encoder"]["vision_encoder"].update(normalization="LayerNorm"),
     r"'image_encoder\.vision_encoder\.normalization' is 'LayerNorm'; this model family uses 'RMSNorm'"),
    (lambda d: d["image_encoder"]["vision_encoder"].update(window_size=112),
     r"unknown key 'image_encoder\.vision_encoder\.window_size'"),
    (lambda d: d.update(model_id="qwen3vl"),
     r"model_id 'qwen3vl' is not a model family this framework builds; known: 'qwen2vl', 'qwen2_5vl'"),
])
def test_clear_errors(tmp_path, edit, message):
    with pytest.raises(ModelConfigError, match=message):
        load_model_json(_tiny(tmp_path, edit))


def test_unknown_hf_model_type():
    with pytest.raises(ModelConfigError, match="model_type 'qwen3_vl' is not a model family"):
        config_from_hf({"model_type": "qwen3_vl"})


def test_qwen2vl_files_still_load_as_qwen2vl():
    from mindspeed_ms.config.model_config import Qwen2VLConfig
    cfg = load_model_json(ROOT / "examples/mindspore/qwen2vl/model_7b.json")
    assert type(cfg) is Qwen2VLConfig and config_to_hf(cfg)["model_type"] == "qwen2_vl"


# finetune_qwen2_5_vl_*.sh: TP, PP, devices, GRAD_ACC_STEP
SCRIPTS = {"7b": (1, 2, 8, 48), "72b": (2, 8, 32, 96)}


@pytest.mark.parametrize("size", ["7b", "72b"])
def test_shipped_layouts_plan_and_memory(size):
    """The shard plan of the shipped scripts' layouts passes the static checker, every parameter on
    one stage with the mm-convert per-rank shapes, and the plan command prints memory per device."""
    import io

    import numpy as np
    from mindspeed_ms.checkpoint.names import scheme_for_model_type
    from mindspeed_ms.checkpoint.pp_split import ParallelLayout
    from mindspeed_ms.checkpoint.tp_split import tp_shape
    from mindspeed_ms.config.param_shapes import mm_param_shapes
    from mindspeed_ms.parallel.checker import check_plan
    from mindspeed_ms.parallel.config import validate_parallel_config
    from mindspeed_ms.parallel.plan import run
    from mindspeed_ms.parallel.rank_params import rank_param_shapes
    from mindspeed_ms.parallel.shard_plan import build_shard_plan
    tp, pp, n, acc = SCRIPTS[size]
    cfg = load_model_json(EXAMPLES / f"model_{size}.json")
    pcfg = validate_parallel_config({"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                                     "micro_batch_size": 1, "global_batch_size": acc * n // (tp * pp),
                                     "seq_length": 1024, "use_distributed_optimizer": True}, cfg, n)
    plan = build_shard_plan(cfg, pcfg, backend="Ascend", bf16=True)
    assert check_plan(plan) == []
    ckpt = ParallelLayout.build(tp_size=tp, llm_pp_layers=pcfg.layout.llm_chunks, vit_pp_layers=pcfg.layout.vit_chunks)
    rules = scheme_for_model_type("qwen2_5_vl").tp_rules
    want = {}
    for name, shape in mm_param_shapes(cfg).items():
        c, local = ckpt.place(name)
        want[(c % pp, c // pp, local)] = tp_shape(name, shape, tp, rules)
    got = {(stage, chunk, k): s for stage in range(pp)
           for chunk, shapes in rank_param_shapes(plan, stage).items() for k, s in shapes.items()}
    assert got == want
    out = io.StringIO()
    assert run(["--mm-model", str(EXAMPLES / f"model_{size}.json"), "--tensor-model-parallel-size", str(tp),
                "--pipeline-model-parallel-size", str(pp), "--micro-batch-size", "1", "--seq-length", "1024",
                "--num-devices", str(n), "--use-distributed-optimizer"], out=out) == 0
    table = out.getvalue().split("memory per device")[1].splitlines()[2:2 + pp]
    assert len(table) == pp and all(float(row.split()[6]) > 0 for row in table)


def test_no_effect_keys_get_a_notice():
    from mindspeed_ms.config.model_config import model_no_effect_notices
    notes = model_no_effect_notices(load_model_json(EXAMPLES / "model_3b.json"))
    assert any("text_decoder.seq_length = 1024 has no effect here" in n for n in notes)
    assert any("patch = {'bridge_patch': False} has no effect here" in n for n in notes)
