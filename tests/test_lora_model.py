"""LoRA on the tiny Qwen2-VL: exact no-op at B = 0, only adapters train, merged weights reproduce
the LoRA model, peft names and init, the shared gate, bad flags."""
import math
import os
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_synthetic import collate, make_samples, small_model_json  # noqa: E402

from mindspeed_ms.config.model_config import load_model_json
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS, Qwen2VLForConditionalGeneration
from mindspeed_ms.peft.lora_merge import merge_lora_state_dict
from mindspeed_ms.peft.lora_model import LoRAConfigError, apply_lora, target_matches
from mindspeed_ms.training.loss_weights import make_loss_weights
from mindspeed_ms.training.optimizer import AdamW
from mindspeed_ms.training.train_step import (ForwardOnly, LossCell, MicroStep, OptimizerStep, TRAIN_KEYS,
                                              inference_mode, make_accumulators)
from helpers.numerics import assert_close_scaled

TARGETS = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_model_json(small_model_json(str(tmp_path_factory.mktemp("m") / "model.json")))
    base = LossCell(Qwen2VLForConditionalGeneration(cfg))
    samples = make_samples(4, seed=3)
    batch = collate(base, samples, [0, 1])
    return cfg, base, samples, batch


def _logits(cell, batch):
    return cell.network(*[Tensor(batch[k]) for k in CONTRACT_KEYS[:8]]).asnumpy()


def _lora_copy(cfg, base, **kw):
    m = LossCell(Qwen2VLForConditionalGeneration(cfg))
    m.network.load_mm_state_dict(base.network.mm_state_dict())
    return m, apply_lora(m, kw.pop("targets", TARGETS), **kw)


def test_zero_b_is_exactly_the_base_model(tiny):
    cfg, base, _, batch = tiny
    lora_model, adapters = _lora_copy(cfg, base)
    # the adapters are really in the graph: A is random, B is zero
    assert all(np.abs(p.asnumpy()).max() > 0 for n, p in adapters.params.items() if "lora_A" in n)
    assert all(not p.asnumpy().any() for n, p in adapters.params.items() if "lora_B" in n)
    np.testing.assert_array_equal(_logits(lora_model, batch), _logits(base, batch))


def test_names_init_and_frozen_base(tiny):
    cfg, base, _, _ = tiny
    lora_model, adapters = _lora_copy(cfg, base, r=4, alpha=32)
    names = {p.name for p in lora_model.get_parameters()}
    assert set(base.network.mm_state_dict()) <= names            # base names unchanged
    a = "text_decoder.decoder.layers.1.mlp.linear_fc1.lora_A.default.weight"
    b = "text_decoder.decoder.layers.1.mlp.linear_fc1.lora_B.default.weight"
    assert adapters.params[a].shape == (4, 64) and adapters.params[b].shape == (2 * 128, 4)
    # LLM (2 layers) + ViT (2 blocks) x 4 linears + projector fc1/fc2 = 18 adapters
    assert len(adapters.layers) == 18 and len(adapters.params) == 36
    assert "image_encoder.projector.encoder.linear_fc2.lora_A.default.weight" in adapters.params
    trainable = {p.name for p in lora_model.get_parameters() if p.requires_grad}
    assert trainable == set(adapters.params)
    # peft's kaiming_uniform_(a=sqrt(5)) on [r, in]: U(-1/sqrt(in), 1/sqrt(in))
    arr = adapters.params["image_encoder.projector.encoder.linear_fc1.lora_A.default.weight"].asnumpy()
    bound = 1 / math.sqrt(arr.shape[1])
    assert arr.max() <= bound and arr.min() >= -bound and arr.max() > 0.8 * bound
    assert adapters.scaling == 8.0


def test_target_matching_rules():
    assert target_matches("linear_qkv", "text_decoder.decoder.layers.0.self_attention.linear_qkv")
    assert target_matches("self_attention.linear_qkv", "image_encoder.encoder.blocks.layers.1.self_attention.linear_qkv")
    assert not target_matches("linear_qkv", "text_decoder.decoder.layers.0.self_attention.linear_qkv_x")
    assert target_matches(r"text_decoder\..*linear_fc1", "text_decoder.decoder.layers.3.mlp.linear_fc1")
    assert not target_matches(r"text_decoder\..*linear_fc1", "image_encoder.encoder.blocks.layers.3.mlp.linear_fc1")


def test_llm_only_pattern(tiny):
    cfg, base, _, _ = tiny
    _, adapters = _lora_copy(cfg, base, targets=[r"text_decoder\..*linear_(qkv|proj)"])
    assert len(adapters.layers) == 4 and all(n.startswith("text_decoder.") for n in adapters.params)


@pytest.mark.parametrize("kw,msg", [
    (dict(targets=["linear_q"]), "matches no linear layer.*linear_fc1, linear_fc2, linear_proj, linear_qkv"),
    (dict(targets=["word_embeddings"]), "LoRA applies to linear layers only"),
    (dict(targets=[]), "--lora-target-modules is empty"),
    (dict(r=0), "--lora-r must be a positive"),
    (dict(dropout=1.0), r"--lora-dropout must be in \[0, 1\)"),
    (dict(targets=["linear_(qkv"]), "not a valid regular expression"),
])
def test_bad_lora_flags(tiny, kw, msg):
    cfg, base, _, _ = tiny
    with pytest.raises(LoRAConfigError, match=msg):
        _lora_copy(cfg, base, **kw)


def _train(model, trainable, samples, steps, lr=5e-3):
    accum = make_accumulators(trainable)
    opt = AdamW(trainable, weight_decay=0.0)
    micro, opt_step = MicroStep(model, trainable, accum), OptimizerStep(accum, opt, 1.0, 1)
    losses = []
    for step in range(steps):
        batch = collate(model, samples, [step % 2 * 2, step % 2 * 2 + 1])
        batch["loss_weights"] = make_loss_weights(batch["labels"], "default", 1, 1)
        loss = micro(Tensor(True), *[Tensor(batch[k]) for k in TRAIN_KEYS])
        opt_step(Tensor(np.array([0.0, 0.0], np.float32)), *opt.host_scalars(lr))
        opt.step += 1
        losses.append(float(loss.asnumpy()))
    return losses


def test_training_touches_only_adapters_and_merge_reproduces_it(tiny):
    cfg, base, samples, batch = tiny
    lora_model, adapters = _lora_copy(cfg, base)
    before = {n: p.asnumpy().copy() for n, p in lora_model.parameters_dict().items()}
    trainable = [p for p in lora_model.get_parameters() if p.requires_grad]
    _train(lora_model, trainable, samples, steps=4)
    after = lora_model.parameters_dict()
    for name, old in before.items():
        changed = not np.array_equal(old, after[name].asnumpy())
        assert changed == (name in adapters.params), name       # every adapter moved, nothing else did
    lora_logits = _logits(lora_model, batch)
    assert np.abs(lora_logits - _logits(base, batch)).max() > 1e-3     # the adapters do something
    merged = merge_lora_state_dict(base.network.mm_state_dict(), adapters.state_dict(), adapters.scaling)
    plain = LossCell(Qwen2VLForConditionalGeneration(cfg))
    plain.network.load_mm_state_dict(merged)
    assert_close_scaled(_logits(plain, batch), lora_logits, 1e-5)


def test_gate_turns_every_adapter_off(tiny):
    cfg, base, _, batch = tiny
    lora_model, adapters = _lora_copy(cfg, base)
    rng = np.random.default_rng(0)
    for n, p in adapters.params.items():
        if "lora_B" in n:
            p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.05))
    on = _logits(lora_model, batch)
    with adapters.disabled():
        off = _logits(lora_model, batch)
    np.testing.assert_array_equal(off, _logits(base, batch))
    assert np.abs(on - off).max() > 1e-3
    np.testing.assert_array_equal(_logits(lora_model, batch), on)     # back on after the block


def test_dropout_trains_but_validation_runs_without_it(tiny):
    """--lora-dropout 0.5: every training pass draws a new mask; the validation Cell, compiled and
    run in `inference_mode` as Trainer.evaluate does, is deterministic and equals the adapter
    without dropout; the training graph keeps its dropout and compiles once."""
    cfg, base, _, batch = tiny
    drop, adapters = _lora_copy(cfg, base, targets=["linear_fc2"], dropout=0.5)
    plain, plain_adapters = _lora_copy(cfg, base, targets=["linear_fc2"])     # same seed, same A
    for a in (adapters, plain_adapters):
        for n, p in a.params.items():
            if "lora_B" in n:
                p.set_data(Tensor(np.full(p.shape, 0.05, np.float32)))
    batch = dict(batch, loss_weights=make_loss_weights(batch["labels"], "default", 1, 1))
    inputs = [Tensor(batch[k]) for k in TRAIN_KEYS]
    trainable = [p for p in drop.get_parameters() if p.requires_grad]
    micro = MicroStep(drop, trainable, make_accumulators(trainable))
    train = lambda: float(micro(Tensor(True), *inputs).asnumpy())  # noqa: E731
    t1, t2 = train(), train()
    assert t1 != t2                                        # a new dropout mask each training pass
    fwd = ForwardOnly(drop)
    with inference_mode(drop):
        v1, v2 = float(fwd(*inputs).asnumpy()), float(fwd(*inputs).asnumpy())
    assert v1 == v2 == float(ForwardOnly(plain)(*inputs).asnumpy())
    t3 = train()
    assert t3 not in (t1, t2, v1) and micro.compilations == 1 and fwd.compilations == 1
