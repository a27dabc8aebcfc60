"""get_rope_index / vision_position_ids / vision batch layout vs HF transformers (numpy side)."""
import types

import numpy as np
import pytest
import torch
from transformers import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel, Qwen2VisionTransformerPretrainedModel

from mindspeed_ms.models.qwen2vl import inputs as vin
from mindspeed_ms.models.qwen2vl import rope

VS, VE, IMG, VID = 151652, 151653, 151655, 151656


def _sample(rng, parts):
    """parts: list of ('t', n) text tokens, ('i', (t,h,w)) image block, ('v', (t,h,w)) video block."""
    toks = []
    for kind, arg in parts:
        if kind == "t":
            toks += rng.integers(0, 1000, size=arg).tolist()
        else:
            t, h, w = arg
            toks += [VS] + [IMG if kind == "i" else VID] * (t * h * w // 4) + [VE]
    return toks


def _pad(seqs, side):
    s = max(len(x) for x in seqs)
    ids = np.zeros((len(seqs), s), dtype=np.int64)
    mask = np.zeros((len(seqs), s), dtype=np.int64)
    for i, x in enumerate(seqs):
        if side == "right":
            ids[i, :len(x)], mask[i, :len(x)] = x, 1
        else:
            ids[i, s - len(x):], mask[i, s - len(x):] = x, 1
    return ids, mask


def _hf_rope(ids, img, vid, mask):
    cfg = Qwen2VLConfig()
    fake = types.SimpleNamespace(config=cfg)
    t = lambda a: None if a is None else torch.tensor(np.asarray(a), dtype=torch.long)
    pos, deltas = Qwen2VLModel.get_rope_index(fake, t(ids), t(img), t(vid), t(mask))
    return pos.numpy(), deltas.numpy()


CASES = {
    "one_image": ([[("t", 5), ("i", (1, 4, 6)), ("t", 7)]], [(1, 4, 6)], None),
    "two_images": ([[("t", 3), ("i", (1, 4, 4)), ("t", 2), ("i", (1, 6, 2)), ("t", 4)]], [(1, 4, 4), (1, 6, 2)], None),
    "video": ([[("t", 4), ("v", (4, 4, 4)), ("t", 3)]], None, [(4, 4, 4)]),
    "image_and_video": ([[("t", 2), ("v", (2, 2, 4)), ("t", 1), ("i", (1, 2, 2)), ("t", 3)]], [(1, 2, 2)], [(2, 2, 4)]),
    "text_only": ([[("t", 9)], [("t", 4)]], None, None),
    "batch_images": ([[("t", 3), ("i", (1, 4, 4)), ("t", 2)], [("t", 1), ("i", (1, 2, 2)), ("t", 2), ("i", (1, 2, 4)), ("t", 6)]],
                     [(1, 4, 4), (1, 2, 2), (1, 2, 4)], None),
}


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_get_rope_index_matches_hf(case, side):
    rng = np.random.default_rng(0)
    parts, img, vid = CASES[case]
    ids, mask = _pad([_sample(rng, p) for p in parts], side)
    pos, deltas = rope.get_rope_index(ids, img, vid, mask)
    ref_pos, ref_deltas = _hf_rope(ids, img, vid, mask)
    assert pos.shape == ref_pos.shape and pos.dtype == np.int32
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(deltas, ref_deltas)


def test_get_rope_index_without_mask_and_dummy_grid():
    rng = np.random.default_rng(1)
    ids = np.array([_sample(rng, [("t", 6)])])
    # a dummy image grid that no token references (the collator's no-image batch) changes nothing
    pos, deltas = rope.get_rope_index(ids, [(1, 2, 2)], None, None)
    ref_pos, ref_deltas = _hf_rope(ids, None, None, None)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(deltas, ref_deltas)


def test_vision_position_ids_match_hf_rot_pos_emb():
    grid = np.array([[1, 4, 6], [2, 2, 4], [1, 8, 2]])
    pos = rope.vision_position_ids(grid)
    # HF gathers its frequency table at these (h, w) positions; use an identity "table" to read them back
    fake = types.SimpleNamespace(spatial_merge_size=2,
                                 rotary_pos_emb=lambda n: torch.arange(n, dtype=torch.float32)[:, None])
    ref = Qwen2VisionTransformerPretrainedModel.rot_pos_emb(fake, torch.tensor(grid)).numpy()
    np.testing.assert_array_equal(pos, ref.astype(np.int32))


def test_inv_freq_matches_hf():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import VisionRotaryEmbedding
    # within a few ulps: pow/exp kernels round differently across CPU generations (seen: 1 ulp on
    # 2 of 16 entries on a Zen 4); a wrong base or dimension moves entries by orders of magnitude
    np.testing.assert_array_max_ulp(rope.vision_rope_inv_freq(16), VisionRotaryEmbedding(8).inv_freq.numpy(), maxulp=4)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = Qwen2VLConfig(text_config={"hidden_size": 64, "num_attention_heads": 2, "rope_theta": 1e6}).text_config
    ref, _ = ROPE_INIT_FUNCTIONS["default"](cfg, None)
    np.testing.assert_array_max_ulp(rope.text_rope_inv_freq(32, 1e6), ref.numpy(), maxulp=4)
    assert not np.allclose(rope.text_rope_inv_freq(32, 1e4), ref.numpy(), rtol=1e-3)


def test_vision_layout_gather_and_segments():
    rng = np.random.default_rng(2)
    img = [(1, 4, 4), (1, 2, 2), (1, 2, 4)]
    vid = [(2, 2, 2)]
    seqs = [_sample(rng, [("t", 3), ("i", img[0]), ("v", vid[0])]),
            _sample(rng, [("i", img[1]), ("t", 2), ("i", img[2])])]
    ids, mask = _pad(seqs, "left")
    out = vin.build_vision_inputs(ids, img, vid, num_patches=48)
    n_img = 4 + 1 + 2
    # images in row-major token order, then videos offset by the image feature count
    flat_ids = ids.reshape(-1)
    g = out["vision_gather_index"].reshape(-1)
    np.testing.assert_array_equal(g[flat_ids == IMG], np.arange(n_img))
    np.testing.assert_array_equal(g[flat_ids == VID], n_img + np.arange(2))
    np.testing.assert_array_equal(out["vision_token_mask"], ((ids == IMG) | (ids == VID)).astype(np.int32))
    assert (g[(flat_ids != IMG) & (flat_ids != VID)] == 0).all()
    # HF cu_seqlens: one segment per image frame / video frame; padding has its own id
    seg = out["vision_segment_ids"]
    lengths = [16, 4, 8, 4, 4]
    expected = np.concatenate([np.full(n, k) for k, n in enumerate(lengths)] + [np.full(48 - 36, 5)])
    np.testing.assert_array_equal(seg, expected)
    assert out["vision_pos_ids"].shape == (48, 2) and (out["vision_pos_ids"][36:] == 0).all()
    for v in out.values():
        assert v.dtype == np.int32


def test_token_count_mismatch_names_both_counts():
    ids = np.array([[1, VS] + [IMG] * 3 + [VE, 2]])
    with pytest.raises(ValueError, match=r"3 <\|image_pad\|> tokens.*gives 4 features"):
        vin.build_vision_inputs(ids, [(1, 4, 4)], None)
    ids = np.array([[1, VS] + [VID] * 5 + [VE, 2]])
    with pytest.raises(ValueError, match=r"5 <\|video_pad\|> tokens.*gives 4 features"):
        vin.build_vision_inputs(ids, None, [(2, 2, 4)])


def test_grid_not_fitting_pixel_values():
    with pytest.raises(ValueError, match=r"has 20 patches but image_grid_thw \[\[1, 4, 4\]\].*16 patches"):
        vin.check_pixel_values(np.zeros((20, 1176)), [(1, 4, 4)], 1176)
    with pytest.raises(ValueError, match="1000 values per patch"):
        vin.check_pixel_values(np.zeros((16, 1000)), [(1, 4, 4)], 1176)
