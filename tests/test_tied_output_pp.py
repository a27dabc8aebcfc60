"""Tied embeddings with pp > 1: the output layer on the last stage holds mm-convert's copy of the
table (`output_layer.weight`), created by the shard plan; a pp > 1 mm-convert checkpoint fills it;
pp 1 stays tied with no extra parameter; the two copies' summed gradient is the tied gradient."""
import copy
import json
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, ops

from mindspeed_ms.checkpoint.mm_io import read_mm_checkpoint, write_mm_checkpoint
from mindspeed_ms.checkpoint.pp_split import ParallelLayout
from mindspeed_ms.config.model_config import model_config_from_dict
from mindspeed_ms.config.param_shapes import mm_param_shapes
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS, Qwen2VLForConditionalGeneration
from mindspeed_ms.parallel.config import validate_parallel_config
from mindspeed_ms.parallel.shard_plan import apply_shard_plan, build_shard_plan
from mindspeed_ms.parallel.tied_grads import OUTPUT, EMBED, TiedGradSum, tied_pairs
from helpers.numerics import assert_close_scaled

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")


def tied_cfg(pp):
    with open(os.path.join(EX, "model_tiny.json")) as f:
        d = copy.deepcopy(json.load(f))
    d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = [2, 0][:pp] if pp == 2 else [2]
    d["text_decoder"]["pipeline_num_layers"] = [1, 1] if pp == 2 else [2]
    d["text_decoder"]["untie_embeddings_and_output_weights"] = False
    return model_config_from_dict(d)


def planned_model(pp):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = tied_cfg(pp)
    model = Qwen2VLForConditionalGeneration(cfg)
    pcfg = validate_parallel_config({"pipeline_model_parallel_size": pp, "seq_length": 16, "global_batch_size": 4,
                                     "micro_batch_size": 1}, cfg, 2 * pp)
    plan = build_shard_plan(cfg, pcfg)
    apply_shard_plan(model, plan)
    return cfg, model, plan


def batch(model):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 900, (2, 12))
    labels = ids.copy()
    labels[:, :3] = -100
    b, _ = model.prepare_batch(ids, labels=labels)
    return [Tensor(b[k]) for k in CONTRACT_KEYS[:9]]


def test_pp1_stays_tied_without_extra_parameter():
    cfg, model, plan = planned_model(1)
    assert not plan.tied_output_copy and not model.text_decoder.output_copy
    assert set(model.parameters_dict()) == set(mm_param_shapes(cfg))
    assert OUTPUT not in model.parameters_dict()


def test_pp2_gets_output_layer_copy_on_the_last_stage():
    cfg, model, plan = planned_model(2)
    td = model.text_decoder
    assert plan.tied_output_copy and td.output_copy
    names = set(model.parameters_dict())
    assert names == set(mm_param_shapes(cfg)) | {OUTPUT}
    assert OUTPUT in [p.name for p in model.trainable_params()]
    assert td.output_layer.pipeline_stage == 1 and td.embedding.pipeline_stage == 0
    assert td.output_layer.matmul.in_strategy == ((2, 1), (1, 1))
    np.testing.assert_array_equal(td.output_layer.weight.asnumpy(), td.embedding.word_embeddings.weight.asnumpy())
    # a real copy: changing the table leaves the output layer alone
    td.embedding.word_embeddings.weight.set_data(td.embedding.word_embeddings.weight * 2)
    assert not np.allclose(td.output_layer.weight.asnumpy(), td.embedding.word_embeddings.weight.asnumpy())


def test_mm_convert_pp2_checkpoint_fills_the_copy_and_pp1_drops_it(tmp_path):
    _, src, _ = planned_model(1)
    sd = src.mm_state_dict()
    assert OUTPUT not in sd
    # mm-convert's pp 2 layout writes the last stage's copy of the tied table
    write_mm_checkpoint(str(tmp_path), "release", sd, ParallelLayout.build(1, [1, 1], [2, 0]))
    loaded, reader = read_mm_checkpoint(str(tmp_path))
    assert reader.layout.pp == 2 and OUTPUT in loaded
    np.testing.assert_array_equal(loaded[OUTPUT], sd[EMBED])
    loaded[OUTPUT] = loaded[OUTPUT] + 1.0       # distinct values prove which tensor lands where

    _, pp2, _ = planned_model(2)
    pp2.load_mm_state_dict(loaded)
    np.testing.assert_array_equal(pp2.text_decoder.output_layer.weight.asnumpy(), loaded[OUTPUT])
    np.testing.assert_array_equal(pp2.text_decoder.embedding.word_embeddings.weight.asnumpy(), sd[EMBED])

    _, pp1, _ = planned_model(1)
    pp1.load_mm_state_dict(loaded)               # strict: the copy is the pipeline's, not a new weight
    assert OUTPUT not in pp1.parameters_dict()
    np.testing.assert_array_equal(pp1.text_decoder.embedding.word_embeddings.weight.asnumpy(), sd[EMBED])

    # a pp 1 checkpoint into a model with a copy: the copy is taken from the table
    _, pp2b, _ = planned_model(2)
    pp2b.load_mm_state_dict(sd)
    np.testing.assert_array_equal(pp2b.text_decoder.output_layer.weight.asnumpy(), sd[EMBED])


def test_copy_model_equals_tied_model_and_summed_grads_equal_the_tied_grad():
    _, tied, _ = planned_model(1)
    _, split, _ = planned_model(2)
    split.load_mm_state_dict(tied.mm_state_dict())
    inputs = batch(tied)
    loss_t, logits_t = tied(*inputs)
    loss_s, logits_s = split(*inputs)
    assert_close_scaled(logits_s.asnumpy(), logits_t.asnumpy(), 1e-6)

    def grads_of(model):
        params = model.trainable_params()
        fn = ms.value_and_grad(lambda *x: model(*x)[0], None, params)
        _, g = fn(*inputs)
        return params, g

    pt, gt = grads_of(tied)
    ps, gs = grads_of(split)
    pairs = tied_pairs(ps, True)
    assert pairs == [([p.name for p in ps].index(EMBED), [p.name for p in ps].index(OUTPUT))]
    assert tied_pairs(pt, True) == [] and tied_pairs(ps, False) == []
    summed = TiedGradSum(pairs)(tuple(gs))
    g_tied = gt[[p.name for p in pt].index(EMBED)].asnumpy()
    i, j = pairs[0]
    # each copy alone is not the tied gradient; their sum is, and both copies get it
    assert not np.allclose(gs[i].asnumpy(), g_tied, atol=1e-7)
    assert_close_scaled(summed[i].asnumpy(), g_tied, 1e-5)
    np.testing.assert_array_equal(summed[j].asnumpy(), summed[i].asnumpy())
    by_name = dict(zip([p.name for p in pt], gt))
    for p, g in zip(ps, summed):
        if p.name != OUTPUT:
            assert_close_scaled(g.asnumpy(), by_name[p.name].asnumpy(), 1e-5, p.name)
