"""DPO training on the tiny model with synthetic pairwise batches: the step's loss and metrics equal
the formula on log-probs recomputed independently, the margin and reward accuracy rise, and the
reference weights are bitwise unchanged (frozen copy, and LoRA with adapters gated off)."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_synthetic import collate, make_samples, small_model_json  # noqa: E402

import mindspore as ms  # noqa: E402
from mindspore import Tensor  # noqa: E402

from mindspeed_ms.arguments import parse_args, validate_args  # noqa: E402
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS  # noqa: E402
from mindspeed_ms.peft.lora_model import apply_lora  # noqa: E402
from mindspeed_ms.peft.lora_training import LoRASession  # noqa: E402
from mindspeed_ms.rl.dpo_log import DPOTrainLogger  # noqa: E402
from mindspeed_ms.rl.dpo_trainer import AdapterOffReference, DPOTrainer, FrozenReference  # noqa: E402
from mindspeed_ms.training.build import build_model, init_runtime  # noqa: E402
from mindspeed_ms.training.data_feed import DataFeed  # noqa: E402


def pairs(n, seed):
    """n preference pairs: the same prompt and image, two different answers of 4 tokens."""
    chosen = make_samples(n, seed=seed, answer_len=4)
    rng = np.random.default_rng(seed + 100)
    rejected = []
    for s in chosen:
        r = dict(s)
        ids, labels = s["input_ids"].copy(), s["labels"].copy()
        ids[-4:] = labels[-4:] = rng.integers(10, 400, size=4)
        r.update(input_ids=ids, labels=labels)
        rejected.append(r)
    return chosen, rejected


def pair_batch(model, chosen, rejected, idx):
    rows = [chosen[i] for i in idx] + [rejected[i] for i in idx]
    return collate(model, rows, list(range(len(rows))))


def make_dpo_trainer(tmp_path, flags, lora_targets=None):
    mj = small_model_json(str(tmp_path / "model.json"))
    args = parse_args(f"--mm-model {mj} --seq-length 64 --seed 7 --lr 2e-3 --train-iters 20 "
                      f"--lr-decay-style constant --weight-decay 0 {flags}".split(), prog="posttrain_qwen2vl_dpo.py")
    st = validate_args(args, 1, "CPU", require_data=False)
    log = DPOTrainLogger(args.train_iters, True)
    init_runtime(args, "CPU", 1, log)
    policy = build_model(st.model, args, "CPU")
    chosen, rejected = pairs(4, seed=11)
    chosen[2]["input_ids"] = np.concatenate([chosen[2]["input_ids"][:1], np.full(9, 17), chosen[2]["input_ids"][1:]])
    chosen[2]["labels"] = np.concatenate([np.full(9, -100), chosen[2]["labels"]])   # a longer second micro-batch
    feed = DataFeed(len(chosen), lambda idx: pair_batch(policy, chosen, rejected, idx), args.micro_batch_size, 1,
                    0, args.grad_acc_steps, args.seed, shuffle=False)
    lora = None
    if lora_targets:
        adapters = apply_lora(policy, lora_targets, r=4, alpha=8, seed=3)
        lora = LoRASession(adapters, base_dir=None, resume_from_load=False)
        reference = AdapterOffReference(policy.network, adapters)
    else:
        ref = build_model(st.model, args, "CPU").network
        ref.load_mm_state_dict(policy.network.mm_state_dict())
        reference = FrozenReference(ref, "the policy's initial weights")
    tr = DPOTrainer(args, st, 0, 1, log, policy, feed, reference)
    if lora:
        lora.bind(tr)
    return tr, chosen, rejected


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def label_logps(model, batch):
    """Summed label log-probs per row, in float64 numpy from the model's logits (independent path)."""
    logits = model(*[Tensor(batch[k]) for k in CONTRACT_KEYS[:8]]).asnumpy().astype(np.float64)
    labels = batch["labels"]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    out = np.zeros(labels.shape[0])
    for b in range(labels.shape[0]):
        for s in range(labels.shape[1] - 1):
            if labels[b, s + 1] != -100:
                out[b] += logp[b, s, labels[b, s + 1]]
    return out


@pytest.mark.parametrize("lora", [pytest.param(False, marks=pytest.mark.slow), True])
def test_dpo_step_matches_formula_learns_and_keeps_reference(tmp_path, lora):
    tr, chosen, rejected = make_dpo_trainer(
        tmp_path, "--micro-batch-size 2 --global-batch-size 4 --dpo-beta 0.5 --dpo-label-smoothing 0.1 "
                  "--pref-ftx 0.2", lora_targets=["linear_qkv", "linear_fc2"] if lora else None)
    ref_before = tr.reference.snapshot()
    frozen_before = {n: p.asnumpy().copy() for n, p in tr.named_params.items() if not p.requires_grad}
    b01 = pair_batch(tr.model, chosen, rejected, [0, 1])
    b23 = pair_batch(tr.model, chosen, rejected, [2, 3])
    counts = {k: (b["labels"][:, 1:] != -100).sum(1)[:2] for k, b in (("01", b01), ("23", b23))}
    sft0 = np.concatenate([-label_logps(tr.model.network, b01)[:2] / counts["01"],
                           -label_logps(tr.model.network, b23)[:2] / counts["23"]])
    # step 1: policy == reference, so every reward is 0 and the DPO part is the formula at d = 0;
    # the loss is the mean over the global batch's 4 pairs (2 micro-batches of 2)
    loss = tr.train_step(tr.feed.next_step())[0]
    m = tr.log.pending
    assert m["rewards/chosen"] == m["rewards/rejected"] == m["rewards/margins"] == m["rewards/accuracies"] == 0.0
    want0 = -_logsigmoid(0.0) * 0.9 - _logsigmoid(0.0) * 0.1 + 0.2 * sft0.mean()
    np.testing.assert_allclose(loss, want0, rtol=1e-4)
    # train on the same pairs: margins and reward accuracy rise, loss falls
    hist = [loss]
    for it in range(2, 9):
        hist.append(tr.train_step(tr.feed.next_step())[0])
        tr.log.iteration(it, 4 * it, 1.0, 2e-3, 4, hist[-1], 0.0, None, False)
    margins = [mm["rewards/margins"] for _, mm in tr.log.metric_history]
    accs = [mm["rewards/accuracies"] for _, mm in tr.log.metric_history]
    # the margin rises from 0 (step 1) with the first update (lr 2e-3 on the same pairs) and then
    # hovers around ~3: compare with step 1, not with step 2
    assert hist[-1] < hist[0] and min(margins) > 0 and accs[-1] == 1.0
    assert tr.micro.compilations == 1           # dynamic shapes on CPU: one graph for every batch shape
    counts = counts["01"]
    # exact formula check of the current policy on one micro-batch through the eval graph
    t = [Tensor(b01[k]) for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision_pos_ids",
                                  "vision_segment_ids", "vision_gather_index", "vision_token_mask", "labels")]
    ref_lp = tr.reference.logps(t)
    out = tr.forward(*t, ref_lp, Tensor(1.0, ms.float32))
    pol = label_logps(tr.model.network, b01)
    if lora:
        with tr.reference.adapters.disabled():
            ref = label_logps(tr.model.network, b01)
    else:
        ref = label_logps(tr.reference.model, b01)
    np.testing.assert_allclose(ref_lp.asnumpy(), ref, rtol=1e-4, atol=1e-3)
    d = (pol[:2] - pol[2:]) - (ref[:2] - ref[2:])
    want = np.mean(-_logsigmoid(0.5 * d) * 0.9 - _logsigmoid(-0.5 * d) * 0.1 + 0.2 * (-pol[:2] / counts))
    rc, rr = 0.5 * (pol[:2] - ref[:2]), 0.5 * (pol[2:] - ref[2:])
    np.testing.assert_allclose(float(out[0].asnumpy()), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([float(x.asnumpy()) for x in out[1:]],
                               [rc.mean(), rr.mean(), (rc - rr).mean(), (rc > rr).mean()], rtol=1e-3, atol=1e-3)
    # the reference never moved: frozen copy bitwise, and (LoRA) every base weight bitwise
    for name, arr in tr.reference.snapshot().items():
        np.testing.assert_array_equal(arr, ref_before[name], err_msg=name)
    for name, arr in frozen_before.items():
        np.testing.assert_array_equal(tr.named_params[name].asnumpy(), arr, err_msg=name)
