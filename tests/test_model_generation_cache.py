"""KV-cache decoding: incremental logits equal the full forward, and greedy tokens equal
transformers' `generate` (its own cache and rope_deltas path) on a tiny random checkpoint."""
import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Tensor

from helpers.hf_tiny import load_hf_reference, make_tiny_hf_checkpoint
from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS, decode_position_ids
from helpers.numerics import assert_close_scaled

PATCH_DIM = 3 * 2 * 14 * 14


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    d = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("gen"), "untied", seed=3)
    return load_hf_reference(d), Qwen2VLForConditionalGeneration.from_pretrained(d)


def _prompt(cfg, rng):
    """Two left-padded prompts with different image counts."""
    blk = lambda g: [cfg.vision_start_token_id] + [cfg.image_token_id] * (g[0] * g[1] * g[2] // 4) + [cfg.vision_end_token_id]
    a = rng.integers(0, 900, 3).tolist() + blk((1, 4, 4)) + rng.integers(0, 900, 2).tolist() + blk((1, 2, 2)) + [7]
    b = rng.integers(0, 900, 5).tolist() + blk((1, 2, 4)) + [9, 11]
    s = max(len(a), len(b))
    ids = np.zeros((2, s), np.int64)
    mask = np.zeros((2, s), np.int64)
    for i, x in enumerate((a, b)):
        ids[i, s - len(x):], mask[i, s - len(x):] = x, 1
    grids = np.array([[1, 4, 4], [1, 2, 2], [1, 2, 4]])
    pix = rng.standard_normal((int(grids.prod(1).sum()), PATCH_DIM)).astype(np.float32)
    return ids, mask, grids, pix


def _greedy(model, ids, mask, grids, pix, steps):
    batch, deltas = model.prepare_batch(ids, mask, pix, grids)
    logits, past = model.prefill(*[Tensor(batch[k]) for k in CONTRACT_KEYS[:8]])
    step_logits = [logits.asnumpy()[:, -1]]
    tokens = []
    cache_len = ids.shape[1]
    for _ in range(steps):
        nxt = step_logits[-1].argmax(-1).reshape(-1, 1)
        tokens.append(nxt)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
        pos = decode_position_ids(deltas, cache_len, 1)
        logits, past = model.decode(Tensor(nxt.astype(np.int32)), Tensor(mask.astype(np.int32)), Tensor(pos), past)
        cache_len += 1
        step_logits.append(logits.asnumpy()[:, -1])
    return np.concatenate(tokens, 1), step_logits, past


def test_incremental_logits_equal_full_forward(pair):
    hf, model = pair
    ids, mask, grids, pix = _prompt(hf.config, np.random.default_rng(0))
    tokens, step_logits, past = _greedy(model, ids, mask, grids, pix, steps=3)
    assert len(past) == 2 and past[0][0].shape == (2, 2, ids.shape[1] + 3, 8)
    full_ids = np.concatenate([ids, tokens], 1)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], 1)
    full = model(input_ids=full_ids, attention_mask=full_mask, pixel_values=pix, image_grid_thw=grids).logits.asnumpy()
    s = ids.shape[1]
    for i, lg in enumerate(step_logits[:-1]):
        assert_close_scaled(lg, full[:, s - 1 + i], 1e-5)


def test_greedy_tokens_equal_hf_generate(pair):
    hf, model = pair
    ids, mask, grids, pix = _prompt(hf.config, np.random.default_rng(1))
    tokens, _, _ = _greedy(model, ids, mask, grids, pix, steps=5)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(pix), image_grid_thw=torch.tensor(grids),
                          max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    np.testing.assert_array_equal(tokens, ref[:, ids.shape[1]:].numpy())
