"""Sequence packing (data/packing.py + the packing collator): first-fit-decreasing bins, packed rows
(positions restarting per sample, vision inputs of every sample), and the training loss: packed
and unpacked batches of the same mixed image / video / text samples give the same loss and
gradients in all three loss modes."""
import copy
import json
import os
import types

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from helpers.images import frames, rgb
from test_data_collator import sample
from mindspeed_ms.config.model_config import model_config_from_dict
from mindspeed_ms.data.collator import Qwen2VLCollator
from mindspeed_ms.data.packing import PackedDataset, first_fit_decreasing
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS, Qwen2VLForConditionalGeneration
from mindspeed_ms.training.loss_weights import loss_rows
from mindspeed_ms.training.trainer import Trainer

EX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mindspore", "qwen2vl")


def brute_first_fit(lengths, cap):
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for k in range(len(bins)):
            if free[k] >= lengths[i]:
                bins[k].append(i)
                free[k] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(cap - lengths[i])
    return bins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_fit_decreasing_matches_the_definition(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 300, int(rng.integers(1, 400)))
    bins = first_fit_decreasing(lengths, 300)
    assert [b.tolist() for b in bins] == brute_first_fit(lengths.tolist(), 300)
    assert sorted(np.concatenate(bins).tolist()) == list(range(len(lengths)))
    assert all(lengths[b].sum() <= 300 for b in bins)
    with pytest.raises(ValueError, match="sample 0 has 301 tokens"):
        first_fit_decreasing([301, 5], 300)


class _Lengths:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def lengths(self):
        return np.array([len(s["input_ids"]) for s in self.items])


@pytest.fixture(scope="module")
def mixed():
    """Image, text-only, two-image, video and image+video samples."""
    rng = np.random.default_rng(0)
    return [sample(rng, images=[rgb(60, 40, 1)]), sample(rng), sample(rng, images=[rgb(30, 90, 2), rgb(50, 50, 3)]),
            sample(rng, videos=[frames(4, 40, 60)]), sample(rng, images=[rgb(40, 40, 4)], videos=[frames(2, 30, 30)]),
            sample(rng)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_rows_hold_each_sample_as_unpacked(mixed, side):
    """Each packed sample keeps its ids, labels (but its first), M-RoPE positions (restarting at
    0) and vision features; the attention mask numbers the samples; cross packing runs one
    position sequence through the row."""
    ds = PackedDataset(_Lengths(mixed), 256)
    packs = [ds[j] for j in range(len(ds))]
    assert sum(len(p) for p in packs) == len(mixed) and len(packs) < len(mixed)
    flat = [s for p in packs for s in p]
    ref = Qwen2VLCollator(256, padding_side=side)(flat)
    got = Qwen2VLCollator(256, padding_side=side, packing="neat")(packs)
    assert got["input_ids"].shape[0] == len(packs)
    np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"])
    for k in ("image_grid_thw", "video_grid_thw", "vision_pos_ids", "vision_segment_ids"):
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    i = 0
    for r, pack in enumerate(packs):
        real = np.flatnonzero(got["attention_mask"][r])
        at = real[0]
        for k, s in enumerate(pack):
            n = len(s["input_ids"])
            ref_real = np.flatnonzero(ref["attention_mask"][i])
            sl = slice(at, at + n)
            np.testing.assert_array_equal(got["input_ids"][r, sl], s["input_ids"])
            assert (got["attention_mask"][r, sl] == k + 1).all() and (got["packed_segments"][r, sl] == k + 1).all()
            np.testing.assert_array_equal(got["labels"][r, sl][1:], s["labels"][1:])
            assert got["labels"][r, at] == -100
            np.testing.assert_array_equal(got["position_ids"][:, r, sl], ref["position_ids"][:, i, ref_real])
            # the same vision feature lands on the same token
            tok = got["vision_token_mask"][r, sl] > 0
            np.testing.assert_array_equal(got["vision_gather_index"][r, sl][tok],
                                          ref["vision_gather_index"][i, ref_real][tok])
            at, i = at + n, i + 1
        assert len(real) == at - real[0]
    cross = Qwen2VLCollator(256, padding_side=side, packing="cross")(packs)
    assert set(np.unique(cross["attention_mask"])) <= {0, 1}
    r = int(np.argmax([len(p) for p in packs]))
    real = np.flatnonzero(cross["attention_mask"][r])
    text_rows = cross["position_ids"][0, r, real]
    assert text_rows[-1] > len(packs[r][-1]["input_ids"])      # positions run on through the row


def tiny_model():
    with open(os.path.join(EX, "model_tiny.json")) as f:
        cfg = model_config_from_dict(copy.deepcopy(json.load(f)))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(3)
    return Qwen2VLForConditionalGeneration(cfg)


def loss_and_grads(model, batch, params):
    keys = CONTRACT_KEYS
    rows = Tensor(loss_rows(batch["loss_weights"]))

    def fn(*t):
        return model.train_loss(*t, None, rows)

    grad_fn = ms.value_and_grad(fn, None, params)
    loss, grads = grad_fn(*[Tensor(batch[k]) for k in keys])
    return float(loss.asnumpy()), [g.asnumpy() for g in grads]


def weigh(mode, micro_batches):
    """Loss weights exactly as `Trainer.train_step` sets them (one rank)."""
    t = types.SimpleNamespace(args=types.SimpleNamespace(loss_mode=mode), dp=1, gbs=len(micro_batches[0]["labels"]))
    t._global_samples = lambda mbs: Trainer._global_samples(t, mbs)
    t._global_valid_tokens = lambda mbs: Trainer._global_valid_tokens(t, mbs)
    Trainer._weights(t, micro_batches, t._global_valid_tokens(micro_batches))


@pytest.mark.parametrize("mode", ["default", "per_sample", "per_token"])
def test_packed_loss_and_gradients_equal_unpacked(mixed, mode):
    ds = PackedDataset(_Lengths(mixed), 64)
    packs = [ds[j] for j in range(len(ds))]
    assert 1 < len(packs) < len(mixed)
    flat = [s for p in packs for s in p]
    unpacked = Qwen2VLCollator(256)(flat)
    packed = Qwen2VLCollator(256, packing="neat")(packs)
    for b in (unpacked, packed):
        weigh(mode, [b])
    assert np.isclose(unpacked["loss_weights"].sum(), packed["loss_weights"].sum(), rtol=1e-6)
    model = tiny_model()
    params = [p for p in model.trainable_params()]
    la, ga = loss_and_grads(model, unpacked, params)
    lb, gb = loss_and_grads(model, packed, params)
    assert np.isfinite(la) and abs(la - lb) <= 1e-5 * abs(la)
    for p, a, b in zip(params, ga, gb):
        scale = max(np.abs(a).max(), 1e-30)
        assert np.abs(a - b).max() <= 1e-5 * scale, p.name
    # cross packing (samples see each other) is a different computation: the check can fail
    cross = Qwen2VLCollator(256, packing="cross")(packs)
    weigh(mode, [cross])
    lc, _ = loss_and_grads(model, cross, params[:1])
    assert abs(lc - la) > 1e-4 * abs(la)
