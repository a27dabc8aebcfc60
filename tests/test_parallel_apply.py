"""The shard plan set on the real model Cells (attributes only: semi-auto parallel cannot compile
on CPU): every strategy finds its primitive, stages and recompute land on the right Cells, and
what the model still lacks is reported by name."""
import copy
import json
import os

import pytest

from mindspeed_ms.config.model_config import model_config_from_dict
from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration
from mindspeed_ms.parallel.config import ParallelConfigError, validate_parallel_config
from mindspeed_ms.parallel.shard_plan import apply_shard_plan, build_shard_plan

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")


def tiny(untie=True, pp=2):
    with open(os.path.join(EX, "model_tiny.json")) as f:
        d = copy.deepcopy(json.load(f))
    d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = [2, 0][:pp]
    d["text_decoder"]["pipeline_num_layers"] = [1, 1] if pp == 2 else [2]
    d["text_decoder"]["untie_embeddings_and_output_weights"] = untie
    d["text_decoder"]["recompute_granularity"] = "full"
    d["text_decoder"]["recompute_method"] = "block"
    d["text_decoder"]["recompute_num_layers"] = 1
    return model_config_from_dict(d)


def test_pipeline_plan_applies_to_the_model():
    cfg = tiny()
    model = Qwen2VLForConditionalGeneration(cfg)
    pcfg = validate_parallel_config({"pipeline_model_parallel_size": 2, "seq_length": 16, "global_batch_size": 4,
                                     "micro_batch_size": 1}, cfg, 4)
    plan = build_shard_plan(cfg, pcfg)
    apply_shard_plan(model, plan)
    layers = model.text_decoder.decoder.layers
    assert layers[0].pipeline_stage == 0 and layers[1].pipeline_stage == 1
    assert model.image_encoder.projector.pipeline_stage == 0
    assert model.text_decoder.output_layer.pipeline_stage == 1
    assert layers[1].self_attention.linear_qkv.matmul.in_strategy == ((2, 1), (1, 1))   # dp 2
    assert layers[0].self_attention.core_attention.bmm_qk.in_strategy == ((2, 1, 1, 1), (2, 1, 1, 1))
    assert model.text_decoder.embedding.word_embeddings.gather.in_strategy == ((1, 1), (2, 1))
    # block recompute of 1 layer per stage: the first LLM layer of each stage
    recomputed = [c.cell for c in plan.cells if c.recompute]
    assert recomputed == ["text_decoder.decoder.layers.0", "text_decoder.decoder.layers.1"]


def test_tensor_parallel_plan_applies_to_the_model():
    cfg = tiny(untie=False, pp=1)
    model = Qwen2VLForConditionalGeneration(cfg)
    pcfg = validate_parallel_config({"tensor_model_parallel_size": 2, "seq_length": 16}, cfg, 2)
    plan = build_shard_plan(cfg, pcfg)
    apply_shard_plan(model, plan)
    # the per-rank GLU split (mm-convert's concat(gate[r], up[r]) per tp rank) is switched on
    assert all(layer.mlp.glu_chunks == 2 for layer in model.text_decoder.decoder.layers)
    qkv = model.text_decoder.decoder.layers[0].self_attention.linear_qkv
    assert qkv.matmul.in_strategy == ((1, 1), (2, 1)) and qkv.bias_add.in_strategy == ((1, 2), (2,))
    assert model.text_decoder.output_matmul.in_strategy == ((1, 1), (2, 1))   # tied, one stage


def test_apply_reports_what_a_model_lacks():
    cfg = tiny(untie=False, pp=1)
    model = Qwen2VLForConditionalGeneration(cfg)
    pcfg = validate_parallel_config({"tensor_model_parallel_size": 2, "seq_length": 16}, cfg, 2)
    plan = build_shard_plan(cfg, pcfg)
    del model.text_decoder.decoder.layers[1].mlp.glu_chunks
    with pytest.raises(ParallelConfigError, match=r"layers\.1\.mlp: TextMLP has no attribute 'glu_chunks'"):
        apply_shard_plan(model, plan)
