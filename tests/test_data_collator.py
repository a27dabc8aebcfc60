"""Collator output follows the batch contract of docs/architecture.md; padding and buckets do not change content."""
import numpy as np
import pytest

from helpers.images import frames, rgb
from mindspeed_ms.data import Qwen2VLImageProcessor
from mindspeed_ms.data.collator import (Qwen2VLCollator, Qwen2VLDPOCollator, length_buckets, loss_weights_for_mode,
                                        patch_bucket)
from mindspeed_ms.models.qwen2vl.rope import get_rope_index

IMG, VID, VS, VE = 151655, 151656, 151652, 151653
CONTRACT = {"input_ids": np.int32, "attention_mask": np.int32, "labels": np.int32, "position_ids": np.int32,
            "pixel_values": np.float32, "vision_pos_ids": np.int32, "vision_segment_ids": np.int32,
            "vision_gather_index": np.int32, "vision_token_mask": np.int32, "loss_weights": np.float32,
            "image_grid_thw": np.int64, "video_grid_thw": np.int64}


def sample(rng, images=(), videos=()):
    """Token ids with one vision block per image/video (sized by its grid), labels on the tail."""
    proc = Qwen2VLImageProcessor(max_pixels=64 * 64)
    s, ids = {}, list(rng.integers(100, 1000, rng.integers(3, 10)))
    if images:
        r = proc(images=list(images))
        s.update(pixel_values=r["pixel_values"], image_grid_thw=r["image_grid_thw"])
        for g in r["image_grid_thw"]:
            ids += [VS] + [IMG] * (int(g.prod()) // 4) + [VE] + list(rng.integers(100, 1000, 3))
    if videos:
        r = proc(videos=list(videos))
        s.update(pixel_values_videos=r["pixel_values_videos"], video_grid_thw=r["video_grid_thw"])
        for g in r["video_grid_thw"]:
            ids += [VS] + [VID] * (int(g.prod()) // 4) + [VE]
    ids += list(rng.integers(100, 1000, rng.integers(2, 8)))
    labels = [-100] * (len(ids) - 4) + ids[-4:]
    s.update(input_ids=np.array(ids, np.int32), labels=np.array(labels, np.int32))
    return s


@pytest.fixture
def batch_samples():
    rng = np.random.default_rng(0)
    return [sample(rng, images=[rgb(60, 40, 1)]), sample(rng), sample(rng, images=[rgb(30, 90, 2), rgb(50, 50, 3)]),
            sample(rng, videos=[frames(3, 40, 60)])]


@pytest.mark.parametrize("side", ["right", "left"])
def test_contract_and_padding_invariance(batch_samples, side):
    b = Qwen2VLCollator(256, padding_side=side)(batch_samples)
    assert set(b) == set(CONTRACT)
    for k, dt in CONTRACT.items():
        assert b[k].dtype == dt, k
    B, S = b["input_ids"].shape
    assert B == 4 and S % 8 == 0 and S in length_buckets(256)
    N = b["pixel_values"].shape[0]
    assert N == patch_bucket(sum(len(s.get("pixel_values", [])) + len(s.get("pixel_values_videos", [])) for s in batch_samples))
    assert b["position_ids"].shape == (3, B, S) and b["vision_pos_ids"].shape == (N, 2)
    # pixel rows: images (in sample order) then videos, then zero padding
    real = np.concatenate([s["pixel_values"] for s in batch_samples if "pixel_values" in s] +
                          [s["pixel_values_videos"] for s in batch_samples if "pixel_values_videos" in s])
    np.testing.assert_array_equal(b["pixel_values"][:len(real)], real)
    assert not b["pixel_values"][len(real):].any()
    offset = 0
    for i, s in enumerate(batch_samples):
        m = b["attention_mask"][i].astype(bool)
        n = len(s["input_ids"])
        assert m.sum() == n and (m[:n].all() if side == "right" else m[S - n:].all())
        np.testing.assert_array_equal(b["input_ids"][i][m], s["input_ids"])
        np.testing.assert_array_equal(b["labels"][i][m], s["labels"])
        assert (b["labels"][i][~m] == -100).all()
        # M-RoPE of the padded row == rope of the sample alone
        own, _ = get_rope_index(s["input_ids"][None], s.get("image_grid_thw"), s.get("video_grid_thw"))
        np.testing.assert_array_equal(b["position_ids"][:, i][:, m], own[:, 0])
    # every vision token gathers a distinct feature; features are used exactly once
    tm = b["vision_token_mask"].astype(bool)
    assert (tm == np.isin(b["input_ids"], [IMG, VID])).all()
    feats = b["vision_gather_index"][tm]
    assert len(np.unique(feats)) == len(feats) == len(real) // 4
    # loss weights: token mean over the shifted valid labels
    lw = b["loss_weights"]
    assert lw[:, -1].sum() == 0 and abs(lw.sum() - 1.0) < 1e-6
    assert ((lw[:, :-1] > 0) == (b["labels"][:, 1:] != -100)).all()


def test_image_features_are_gathered_in_token_order(batch_samples):
    b = Qwen2VLCollator(256)(batch_samples)
    img_tokens = b["vision_gather_index"][b["input_ids"] == IMG]
    np.testing.assert_array_equal(img_tokens, np.arange(len(img_tokens)))
    vid_tokens = b["vision_gather_index"][b["input_ids"] == VID]
    np.testing.assert_array_equal(vid_tokens, len(img_tokens) + np.arange(len(vid_tokens)))
    seg = b["vision_segment_ids"]
    n_frames = sum(int(g[0]) for g in np.concatenate([b["image_grid_thw"], b["video_grid_thw"]]))
    assert len(np.unique(seg)) == n_frames + 1  # + the padding segment


def test_text_only_batch_gets_dummy_image():
    rng = np.random.default_rng(1)
    b = Qwen2VLCollator(128)([sample(rng), sample(rng)])
    assert b["pixel_values"].shape == (4, 3 * 2 * 14 * 14)
    assert b["image_grid_thw"].shape == (0, 3) and not b["vision_token_mask"].any()


def test_few_shapes_over_many_batches():
    shapes = set()
    rng = np.random.default_rng(2)
    c = Qwen2VLCollator(2048)
    for _ in range(200):
        n = int(rng.integers(1, 2048))
        shapes.add(c([{"input_ids": np.ones(n, np.int32), "labels": np.ones(n, np.int32)}])["input_ids"].shape[1])
    assert all(s % 8 == 0 for s in shapes) and len(shapes) <= len(length_buckets(2048)) <= 12
    assert [patch_bucket(n) for n in (0, 4, 64, 65, 96, 97, 200)] == [4, 64, 64, 96, 96, 128, 256]


def test_dpo_collator_chosen_then_rejected():
    rng = np.random.default_rng(3)
    pairs = []
    for k in range(2):
        s = sample(rng, images=[rgb(40, 40, k)])
        r = sample(rng)
        pairs.append({"chosen_input_ids": s["input_ids"], "chosen_labels": s["labels"],
                      "rejected_input_ids": np.concatenate([s["input_ids"][:-4], r["input_ids"][-4:]]),
                      "rejected_labels": np.concatenate([s["labels"][:-4], r["input_ids"][-4:]]),
                      "pixel_values": s["pixel_values"], "image_grid_thw": s["image_grid_thw"]})
    b = Qwen2VLDPOCollator(256)(pairs)
    assert b["input_ids"].shape[0] == 4 and b["image_grid_thw"].shape == (4, 3)
    for i, p in enumerate(pairs):
        n = len(p["chosen_input_ids"])
        np.testing.assert_array_equal(b["input_ids"][i, :n], p["chosen_input_ids"])
        np.testing.assert_array_equal(b["input_ids"][2 + i, :n], p["rejected_input_ids"])


def test_loss_weight_modes():
    labels = np.array([[-100, 1, 2, -100], [-100, -100, 3, -100]])
    per_sample = loss_weights_for_mode(labels, "per_sample", global_batch_size=2)
    np.testing.assert_allclose(per_sample.sum(axis=1), [0.5, 0.5])
    per_token = loss_weights_for_mode(labels, "per_token", global_valid_tokens=6)
    np.testing.assert_allclose(per_token.sum(), 3 / 6)
