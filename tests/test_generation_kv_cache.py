"""Generation with the KV cache == recomputing the whole sequence every step (greedy, 30+ tokens,
with images), and both == transformers' `generate` on the same random checkpoint."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mindspore as ms  # noqa: E402

from helpers.hf_tiny import load_hf_reference, make_tiny_hf_checkpoint  # noqa: E402
from mindspeed_ms.inference.generate import generate  # noqa: E402
from mindspeed_ms.inference.sampling import SamplingConfig  # noqa: E402
from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration  # noqa: E402

# Synchronous PYNATIVE: on a busy 2-core machine the async op pipeline is ~15x slower for the
# small ops of decoding. It only takes effect before the first op runs, hence at import.
ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)

N_NEW = 34
PATCH_DIM = 3 * 2 * 14 * 14


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    d = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("gen"), "tied", seed=3)
    return load_hf_reference(d), Qwen2VLForConditionalGeneration.from_pretrained(d)


def _prompt(rng, grids, n_text=(5, 4, 3)):
    """<|im_start|>user\n [text] <image block> [text] ... <|im_end|>\n<|im_start|>assistant\n"""
    ids = [151644, 872, 198] + rng.integers(0, 150000, n_text[0]).tolist()
    for k, (t, h, w) in enumerate(grids):
        ids += [151652] + [151655] * (t * h * w // 4) + [151653] + rng.integers(0, 150000, n_text[k + 1]).tolist()
    return ids + [151645, 198, 151644, 77091, 198]


def _left_pad(seqs, pad=151643):
    s = max(len(x) for x in seqs)
    ids = np.full((len(seqs), s), pad, np.int64)
    mask = np.zeros((len(seqs), s), np.int64)
    for i, x in enumerate(seqs):
        ids[i, s - len(x):] = x
        mask[i, s - len(x):] = 1
    return ids, mask


def _hf_greedy(hf, ids, mask, pixels, grids, n):
    with torch.no_grad():
        out = hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                          pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.tensor(grids),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=151643)
    return out[:, ids.shape[1]:].numpy().tolist()


def test_cache_equals_recompute_equals_hf_one_image(models):
    hf, ours = models
    rng = np.random.default_rng(0)
    grids = [[1, 6, 4]]
    ids = np.array([_prompt(rng, grids)])
    pixels = rng.normal(size=(24, PATCH_DIM)).astype(np.float32)
    cached = generate(ours, ids, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=N_NEW, stop_token_ids=())
    full = generate(ours, ids, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=N_NEW, stop_token_ids=(),
                    use_cache=False)
    assert len(cached.tokens[0]) == N_NEW
    assert cached.tokens == full.tokens
    assert cached.tokens == _hf_greedy(hf, ids, np.ones_like(ids), pixels, grids, N_NEW)
    # the image matters: other pixels give other tokens (so the test really runs the vision path)
    other = generate(ours, ids, pixel_values=pixels[::-1].copy(), image_grid_thw=grids, max_new_tokens=N_NEW,
                     stop_token_ids=())
    assert other.tokens != cached.tokens


def test_left_padded_batch_with_two_images(models):
    hf, ours = models
    rng = np.random.default_rng(1)
    g0, g1, g2 = [1, 4, 4], [1, 2, 6], [1, 4, 2]
    seqs = [_prompt(rng, [g0, g1]), _prompt(rng, [g2], n_text=(2, 1))]
    ids, mask = _left_pad(seqs)
    grids = [g0, g1, g2]
    pixels = rng.normal(size=(16 + 12 + 8, PATCH_DIM)).astype(np.float32)
    cached = generate(ours, ids, mask, pixels, grids, max_new_tokens=12, stop_token_ids=())
    full = generate(ours, ids, mask, pixels, grids, max_new_tokens=12, stop_token_ids=(), use_cache=False)
    assert cached.tokens == full.tokens
    assert cached.tokens == _hf_greedy(hf, ids, mask, pixels, grids, 12)
    # each padded row generates what it generates alone
    alone = generate(ours, np.array([seqs[1]]), pixel_values=pixels[28:], image_grid_thw=[g2], max_new_tokens=12,
                     stop_token_ids=())
    assert alone.tokens[0] == cached.tokens[1]


def test_stop_token_and_sampling_reproducible(models):
    _, ours = models
    rng = np.random.default_rng(2)
    ids = np.array([_prompt(rng, [[1, 2, 2]])])
    pixels = rng.normal(size=(4, PATCH_DIM)).astype(np.float32)
    free = generate(ours, ids, pixel_values=pixels, image_grid_thw=[[1, 2, 2]], max_new_tokens=6, stop_token_ids=())
    stop_at = free.tokens[0][2]
    out = generate(ours, ids, pixel_values=pixels, image_grid_thw=[[1, 2, 2]], max_new_tokens=6,
                   stop_token_ids=(stop_at,))
    first = free.tokens[0].index(stop_at)
    assert out.tokens[0] == free.tokens[0][:first + 1] and out.stopped == [True]
    assert free.stopped == [False]
    cfg = SamplingConfig(do_sample=True, temperature=1.5, top_p=0.95, seed=11)
    a = generate(ours, ids, pixel_values=pixels, image_grid_thw=[[1, 2, 2]], max_new_tokens=8, sampling=cfg,
                 stop_token_ids=())
    b = generate(ours, ids, pixel_values=pixels, image_grid_thw=[[1, 2, 2]], max_new_tokens=8, sampling=cfg,
                 stop_token_ids=(), use_cache=False)
    assert a.tokens == b.tokens
