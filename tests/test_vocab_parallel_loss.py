"""Vocab-parallel cross-entropy: the max / sum-exp decomposition (VocabParallelLogProb) equals the
LogSoftmax/GatherD loss and torch's cross_entropy; a per-shard simulation of the tp split (local
max -> global max, local sum-exp -> global sum, target on its owning shard) gives the same values;
the shard plan keeps the logits vocab-split into the loss and still passes the checker."""
import copy
import json
import os

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from mindspeed_ms.config.model_config import model_config_from_dict
from mindspeed_ms.models.qwen2vl.loss import CausalLMLoss
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS, Qwen2VLForConditionalGeneration
from mindspeed_ms.models.qwen2vl.vocab_parallel_ce import VocabParallelLogProb
from mindspeed_ms.parallel.checker import assert_plan_ok
from mindspeed_ms.parallel.config import validate_parallel_config
from mindspeed_ms.parallel.shard_plan import apply_shard_plan, build_shard_plan
from helpers.numerics import assert_close_scaled

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")


def case(seed=0, b=2, s=9, v=37, scale=6.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((b, s, v)) * scale).astype(np.float32)
    labels = rng.integers(0, v, (b, s)).astype(np.int32)
    labels[0, :3] = -100
    labels[1, -2] = -100
    weights = rng.random((b, s)).astype(np.float32)
    return logits, labels, weights


def losses(vocab_parallel, logits, labels, weights=None):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    fn = CausalLMLoss()
    fn.vocab_parallel = vocab_parallel
    lw = None if weights is None else Tensor(weights)
    grad = ms.value_and_grad(lambda x: fn(x, Tensor(labels), lw))
    loss, g = grad(Tensor(logits))
    return float(loss.asnumpy()), g.asnumpy()


@pytest.mark.parametrize("weighted", [False, True])
def test_decomposition_equals_log_softmax_loss_and_torch(weighted):
    logits, labels, weights = case()
    w = weights if weighted else None
    ref_loss, ref_grad = losses(False, logits, labels, w)
    loss, grad = losses(True, logits, labels, w)
    assert abs(loss - ref_loss) <= 1e-6 * max(1.0, abs(ref_loss))
    # gradients: softmax - onehot from two fp32 formulas, a few ulps apart on O(1) weights
    assert_close_scaled(grad, ref_grad, 1e-5)
    # torch: shifted cross entropy, -100 ignored
    lt = torch.tensor(logits[:, :-1].reshape(-1, logits.shape[-1]))
    tt = torch.tensor(labels[:, 1:].reshape(-1).astype(np.int64))
    ce = torch.nn.functional.cross_entropy(lt, tt, ignore_index=-100, reduction="none").numpy()
    ref = ce.mean(where=tt.numpy() != -100) if w is None else (ce * w[:, :-1].reshape(-1)).sum()
    assert abs(loss - float(ref)) <= 1e-5 * max(1.0, abs(float(ref)))


def test_graph_mode_compiles_and_matches():
    logits, labels, _ = case(seed=3)
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        on, off = CausalLMLoss(), CausalLMLoss()
        on.vocab_parallel = True
        a = float(on(Tensor(logits), Tensor(labels)).asnumpy())
        b = float(off(Tensor(logits), Tensor(labels)).asnumpy())
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert abs(a - b) <= 1e-6 * max(1.0, abs(b))


@pytest.mark.parametrize("tp", [2, 4])
def test_per_shard_simulation_matches_the_cell(tp):
    """What semi-auto parallel computes with the vocab axis split in tp contiguous pieces: each rank
    reduces its piece, the partial results are all-reduced (max, then sums)."""
    logits, labels, _ = case(seed=tp, v=48)
    x = logits.reshape(-1, 48).astype(np.float64)
    t = np.where(labels < 0, 0, labels).reshape(-1)
    shards = np.split(x, tp, axis=1)
    onehot = np.eye(48)[t]
    oh_shards = np.split(onehot, tp, axis=1)
    gmax = np.max([sh.max(axis=1) for sh in shards], axis=0)                    # AllReduce(max)
    sumexp = np.sum([np.exp(sh - gmax[:, None]).sum(axis=1) for sh in shards], axis=0)   # AllReduce(sum)
    picked = np.sum([((sh - gmax[:, None]) * oh).sum(axis=1) for sh, oh in zip(shards, oh_shards)], axis=0)
    owners = [int(np.nonzero([oh[i].any() for oh in oh_shards])[0][0]) for i in range(len(t))]
    assert owners == (t // (48 // tp)).tolist()        # exactly one shard holds each target
    sim = (picked - np.log(sumexp)).reshape(labels.shape)
    cell = VocabParallelLogProb()(Tensor(logits), Tensor(t.reshape(labels.shape).astype(np.int32))).asnumpy()
    assert_close_scaled(cell, sim, 1e-5)


def tiny(tp_seq=16):
    with open(os.path.join(EX, "model_tiny.json")) as f:
        d = copy.deepcopy(json.load(f))
    return model_config_from_dict(d)


def test_plan_keeps_logits_vocab_split_into_the_loss():
    cfg = tiny()
    pcfg = validate_parallel_config({"tensor_model_parallel_size": 2, "seq_length": 16}, cfg, 4)
    plan = build_shard_plan(cfg, pcfg)
    assert_plan_ok(plan)
    assert not [e for e in plan.entries if e.prim == "log_softmax"]
    out = next(e for e in plan.entries if e.role == "vocab" and e.prim in ("matmul", "output_matmul"))
    assert out.strategy[1] == (2, 1)                     # output layer: vocab rows split by tp
    ce = {e.prim: e for e in plan.entries if e.cell == "loss_fn.vocab_ce"}
    assert set(ce) == {"reduce_max", "sub", "exp", "sum_exp", "onehot", "mul_pick", "sum_pick"}
    assert all(e.strategy[0] == (2, 2) for e in ce.values())   # rows by dp 2, vocab by tp 2
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = Qwen2VLForConditionalGeneration(cfg)
    apply_shard_plan(model, plan)
    assert model.loss_fn.vocab_parallel
    assert model.loss_fn.vocab_ce.onehot.in_strategy == ((2, 2), (), ())
    # tp 1: the plain loss stays (no onehot over the vocabulary)
    p1 = build_shard_plan(cfg, validate_parallel_config({"seq_length": 16}, cfg, 2))
    assert [e.prim for e in p1.entries if e.cell.startswith("loss_fn")] == ["log_softmax"]
    assert_plan_ok(p1)


def test_model_loss_equal_with_vocab_parallel_ce():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = Qwen2VLForConditionalGeneration(tiny())
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 900, (2, 10))
    labels = ids.copy()
    labels[:, :2] = -100
    b, _ = model.prepare_batch(ids, labels=labels)
    inputs = [Tensor(b[k]) for k in CONTRACT_KEYS[:9]]
    ref = float(model(*inputs)[0].asnumpy())
    model.loss_fn.vocab_parallel = True
    got = float(model(*inputs)[0].asnumpy())
    assert abs(got - ref) <= 1e-6 * max(1.0, abs(ref))
