"""Data side of a data-parallel ViT on the Ascend path: under semi-auto parallel the patches of all
dp ranks form one sequence (global tensors = the ranks' local ones concatenated), so each rank's
`vision_segment_ids`, `vision_gather_index` and `vision_cu_seqlens` are made global by the
collator's `dp_rank` option. Checked by running the global batch through the model on CPU: each
rank's rows equal that rank's own local run, and without the offsets they do not."""
import copy
import json
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from helpers.images import rgb
from mindspeed_ms.config.model_config import model_config_from_dict
from mindspeed_ms.data import Qwen2VLImageProcessor
from mindspeed_ms.data.collator import Qwen2VLCollator
from mindspeed_ms.models.qwen2vl.inputs import vision_cu_seqlens
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS, Qwen2VLForConditionalGeneration
from helpers.numerics import assert_close_scaled

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")
IMG, VS, VE = 151655, 151652, 151653
N, S, K = 64, 64, 6          # patches per rank, tokens per row, ViT blocks per rank
BATCH_AXIS = {"input_ids": 0, "attention_mask": 0, "labels": 0, "position_ids": 1, "pixel_values": 0,
              "vision_pos_ids": 0, "vision_segment_ids": 0, "vision_gather_index": 0, "vision_token_mask": 0,
              "vision_cu_seqlens": 0}


def sample(rng, images):
    proc = Qwen2VLImageProcessor(max_pixels=56 * 56)
    r = proc(images=images)
    ids = list(rng.integers(100, 1000, 3))
    for g in r["image_grid_thw"]:
        ids += [VS] + [IMG] * (int(g.prod()) // 4) + [VE] + list(rng.integers(100, 1000, 2))
    labels = [-100] * (len(ids) - 3) + ids[-3:]
    return {"input_ids": np.array(ids, np.int32), "labels": np.array(labels, np.int32),
            "pixel_values": r["pixel_values"], "image_grid_thw": r["image_grid_thw"]}


def rank_samples():
    rng = np.random.default_rng(0)
    return [[sample(rng, [rgb(56, 28, 1)]), sample(rng, [rgb(28, 28, 2)])],
            [sample(rng, [rgb(28, 56, 3), rgb(28, 28, 4)])]]


def collate(samples, dp_rank):
    return Qwen2VLCollator(S, buckets=[S], num_patches=N, vision_segments=K, dp_rank=dp_rank)(samples)


def test_offsets_make_ids_unique_and_indices_global():
    local = [collate(s, None) for s in rank_samples()]
    glob = [collate(s, r) for r, s in enumerate(rank_samples())]
    for r, (lo, gl) in enumerate(zip(local, glob)):
        assert gl["vision_segment_ids"].min() >= r * N and gl["vision_segment_ids"].max() < (r + 1) * N
        np.testing.assert_array_equal(gl["vision_segment_ids"], lo["vision_segment_ids"] + r * N)
        takes = lo["vision_token_mask"] > 0
        np.testing.assert_array_equal(gl["vision_gather_index"][takes], lo["vision_gather_index"][takes] + r * N // 4)
        assert not gl["vision_gather_index"][~takes].any()
        np.testing.assert_array_equal(gl["vision_cu_seqlens"], lo["vision_cu_seqlens"] + r * N)
        for key in ("input_ids", "pixel_values", "position_ids", "vision_pos_ids", "labels"):
            np.testing.assert_array_equal(gl[key], lo[key])
    ends = np.concatenate([g["vision_cu_seqlens"] for g in glob])
    segs = np.concatenate([g["vision_segment_ids"] for g in glob])
    # the concatenated ends are the global sequence's blocks: increasing, ending at dp x N
    assert (np.diff(ends) > 0).all() and ends[-1] == 2 * N and len(ends) == 2 * K
    assert set(vision_cu_seqlens(segs).tolist()) <= set(ends.tolist())


def global_batch(batches):
    return {k: np.concatenate([b[k] for b in batches], axis=ax) for k, ax in BATCH_AXIS.items()}


def test_global_run_equals_each_rank_local_run():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    with open(os.path.join(EX, "model_tiny.json")) as f:
        model = Qwen2VLForConditionalGeneration(model_config_from_dict(copy.deepcopy(json.load(f))))
    samples = rank_samples()
    local = [collate(s, None) for s in samples]

    def logits(b):
        return model(*[Tensor(b[k]) for k in CONTRACT_KEYS[:8]]).asnumpy()

    want = [logits(b) for b in local]
    got = logits(global_batch([collate(s, r) for r, s in enumerate(samples)]))
    assert_close_scaled(got[:2], want[0], 1e-5)
    assert_close_scaled(got[2:], want[1], 1e-5)
    # without the offsets rank 1's tokens take rank 0's features and its images attend across ranks
    wrong = logits(global_batch(local))
    assert not np.allclose(wrong[2:], want[1], atol=1e-4)


def test_dp_rank_needs_fixed_shapes():
    with pytest.raises(ValueError, match=r"dp_rank=1: .*give num_patches and a single length bucket"):
        Qwen2VLCollator(S, dp_rank=1)
    with pytest.raises(ValueError, match=r"has 96 image/video patches but the collator's num_patches is 64"):
        Qwen2VLCollator(S, buckets=[256], num_patches=64)([sample(np.random.default_rng(1), [rgb(56, 56, 1)] * 6)])
