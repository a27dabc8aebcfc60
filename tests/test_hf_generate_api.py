"""`model.generate(...)` and `model.save_pretrained(dir)` behave as transformers' on the same random
tiny checkpoint: greedy and beam-search tokens equal token for token (images, a left-padded batch,
a video, eos, repetition penalty, min_new_tokens, stop strings, length penalty, early stopping),
HF-shaped output; sampling reproducible by seed
and equal to transformers where the draw is deterministic (top_k=1); a saved directory loads in
transformers and gives the same logits."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mindspore as ms  # noqa: E402

from helpers.hf_tiny import load_hf_reference, make_tiny_hf_checkpoint  # noqa: E402
from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration  # noqa: E402

ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)

PATCH_DIM = 3 * 2 * 14 * 14
PAD = 151643


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = make_tiny_hf_checkpoint(tmp_path_factory.mktemp("api"), "tied", seed=3)
    from mindspeed_ms.tools.build_tokenizer import build_tokenizer
    build_tokenizer(d, None, with_processor=True)  # stop strings need the tokenizer
    return load_hf_reference(d), Qwen2VLForConditionalGeneration.from_pretrained(d), d


def _prompt(rng, grids, pad_id=151655, n_text=(5, 4, 3)):
    ids = [151644, 872, 198] + rng.integers(0, 150000, n_text[0]).tolist()
    for k, (t, h, w) in enumerate(grids):
        ids += [151652] + [pad_id] * (t * h * w // 4) + [151653] + rng.integers(0, 150000, n_text[k + 1]).tolist()
    return ids + [151645, 198, 151644, 77091, 198]


def _left_pad(seqs):
    s = max(len(x) for x in seqs)
    ids = np.full((len(seqs), s), PAD, np.int64)
    mask = np.zeros((len(seqs), s), np.int64)
    for i, x in enumerate(seqs):
        ids[i, s - len(x):] = x
        mask[i, s - len(x):] = 1
    return ids, mask


def _hf(hf, inputs, **kw):
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    with torch.no_grad():
        return hf.generate(**t, pad_token_id=PAD, **kw).numpy()


def _image_inputs(seed=0):
    rng = np.random.default_rng(seed)
    g0, g1, g2 = [1, 4, 4], [1, 2, 6], [1, 4, 2]
    ids, mask = _left_pad([_prompt(rng, [g0, g1]), _prompt(rng, [g2], n_text=(2, 1))])
    pixels = rng.normal(size=(16 + 12 + 8, PATCH_DIM)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
            "image_grid_thw": np.array([g0, g1, g2], np.int64)}


def test_greedy_images_batch_equals_transformers_with_eos(models):
    hf, ours, _ = models
    inputs = _image_inputs()
    free = ours.generate(**inputs, max_new_tokens=10, pad_token_id=PAD)
    assert free.shape == (2, inputs["input_ids"].shape[1] + 10) and free.dtype == np.int64
    np.testing.assert_array_equal(free, _hf(hf, inputs, max_new_tokens=10, do_sample=False))
    # an eos id that row 0 produces at step 3: row 0 stops there and is padded, row 1 goes on
    s = inputs["input_ids"].shape[1]
    eos = int(free[0, s + 2])
    out = ours.generate(**inputs, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD)
    np.testing.assert_array_equal(out, _hf(hf, inputs, max_new_tokens=10, do_sample=False, eos_token_id=eos))
    first = free[0, s:].tolist().index(eos)
    assert (out[0, s + first + 1:] == PAD).all()


def test_greedy_video_equals_transformers(models):
    hf, ours, _ = models
    rng = np.random.default_rng(4)
    grid = [2, 4, 6]
    ids = np.array([_prompt(rng, [grid], pad_id=151656)])
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids),
              "pixel_values_videos": rng.normal(size=(48, PATCH_DIM)).astype(np.float32),
              "video_grid_thw": np.array([grid], np.int64)}
    out = ours.generate(**inputs, max_new_tokens=12, pad_token_id=PAD)
    np.testing.assert_array_equal(out, _hf(hf, inputs, max_new_tokens=12, do_sample=False))
    # the video matters
    other = dict(inputs, pixel_values_videos=inputs["pixel_values_videos"][::-1].copy())
    assert not np.array_equal(ours.generate(**other, max_new_tokens=12, pad_token_id=PAD), out)


def test_repetition_penalty_min_new_tokens_equal_transformers(models):
    hf, ours, _ = models
    inputs = _image_inputs(1)
    s = inputs["input_ids"].shape[1]
    free = ours.generate(**inputs, max_new_tokens=8, pad_token_id=PAD)
    eos = int(free[0, s])  # would stop row 0 at once, but min_new_tokens forbids it for 4 steps
    kw = dict(max_new_tokens=8, repetition_penalty=1.7, min_new_tokens=4, eos_token_id=eos)
    out = ours.generate(**inputs, pad_token_id=PAD, **kw)
    np.testing.assert_array_equal(out, _hf(hf, inputs, do_sample=False, **kw))
    assert not np.array_equal(out, free)


def test_stop_strings_equal_transformers(models):
    hf, ours, d = models
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    inputs = _image_inputs(2)
    s = inputs["input_ids"].shape[1]
    free = ours.generate(**inputs, max_new_tokens=12, pad_token_id=PAD)
    text = tok.decode(free[0, s + 4:s + 6].tolist())
    stop = text.strip()[:3] or text[:3]
    assert stop
    # with an eos id, as real checkpoints have (without any, transformers does not pad a row that
    # stopped on a string while others go on; we always do)
    kw = dict(max_new_tokens=12, stop_strings=[stop], tokenizer=tok, eos_token_id=151645)
    out = ours.generate(**inputs, pad_token_id=PAD, **kw)
    np.testing.assert_array_equal(out, _hf(hf, inputs, do_sample=False, **kw))
    assert (out[0, s:] == PAD).any() and not np.array_equal(out, free)


def test_sampling_seeded_and_top_k_1_equals_transformers(models):
    hf, ours, _ = models
    inputs = _image_inputs(3)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95, top_k=0, pad_token_id=PAD)
    a = ours.generate(**inputs, seed=5, **kw)
    assert np.array_equal(a, ours.generate(**inputs, seed=5, **kw))
    assert not np.array_equal(a, ours.generate(**inputs, seed=6, **kw))
    # top_k=1 leaves one token to draw: the sampling path then gives transformers' tokens
    one = dict(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=1)
    np.testing.assert_array_equal(ours.generate(**inputs, pad_token_id=PAD, seed=9, **one), _hf(hf, inputs, **one))


def test_beam_search_equals_transformers(models):
    hf, ours, _ = models
    inputs = _image_inputs()
    s = inputs["input_ids"].shape[1]
    kw = dict(num_beams=3, max_new_tokens=8)
    beam = ours.generate(**inputs, pad_token_id=PAD, **kw)
    np.testing.assert_array_equal(beam, _hf(hf, inputs, do_sample=False, **kw))
    assert not np.array_equal(beam, ours.generate(**inputs, pad_token_id=PAD, max_new_tokens=8))  # not greedy
    # an eos that the best beam of row 0 reaches early, with a length penalty that lets the short
    # hypothesis win: finished hypotheses, padding and both early-stopping rules are exercised
    eos = int(beam[0, s + 1])
    for early in (False, True):
        kw = dict(num_beams=3, max_new_tokens=8, eos_token_id=eos, length_penalty=0.0, early_stopping=early)
        out = ours.generate(**inputs, pad_token_id=PAD, **kw)
        np.testing.assert_array_equal(out, _hf(hf, inputs, do_sample=False, **kw))
        assert (out[0, s:] == PAD).any()


def test_beam_search_video_and_penalties_equal_transformers(models):
    hf, ours, _ = models
    rng = np.random.default_rng(4)
    grid = [2, 4, 6]
    ids = np.array([_prompt(rng, [grid], pad_id=151656)])
    video = {"input_ids": ids, "attention_mask": np.ones_like(ids), "video_grid_thw": np.array([grid], np.int64),
             "pixel_values_videos": rng.normal(size=(48, PATCH_DIM)).astype(np.float32)}
    np.testing.assert_array_equal(ours.generate(**video, pad_token_id=PAD, num_beams=2, max_new_tokens=6),
                                  _hf(hf, video, do_sample=False, num_beams=2, max_new_tokens=6))
    inputs = _image_inputs(1)
    kw = dict(num_beams=4, max_new_tokens=6, length_penalty=0.5, repetition_penalty=1.3, min_new_tokens=2,
              early_stopping="never", eos_token_id=[151645, int(ours.generate(**inputs, max_new_tokens=1,
                                                                             pad_token_id=PAD)[0, -1])])
    np.testing.assert_array_equal(ours.generate(**inputs, pad_token_id=PAD, **kw),
                                  _hf(hf, inputs, do_sample=False, **kw))


def test_settings_refused_with_the_key(models):
    _, ours, _ = models
    inputs = _image_inputs()
    with pytest.raises(ValueError, match="beam sampling"):
        ours.generate(**inputs, num_beams=2, do_sample=True, max_new_tokens=2)
    with pytest.raises(ValueError, match="streamer"):
        ours.generate(**inputs, num_beams=2, max_new_tokens=2, streamer=lambda ids, live: None)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        ours.generate(**inputs, no_repeat_ngram_size=3)
    with pytest.raises(TypeError, match="max_tokens"):
        ours.generate(**inputs, max_tokens=3)
    with pytest.raises(ValueError, match="tokenizer"):
        ours.generate(**inputs, stop_strings=["x"], max_new_tokens=2)
    # transformers' default max_length=20 counts the prompt: a longer prompt needs max_new_tokens
    with pytest.raises(ValueError, match="max_new_tokens"):
        ours.generate(**inputs)


def test_save_pretrained_loads_in_transformers_same_logits(models, tmp_path):
    hf, ours, d = models
    out = tmp_path / "saved"
    ours.generation_config = {"eos_token_id": [151645], "pad_token_id": PAD}
    ours.save_pretrained(out)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    loaded = load_hf_reference(str(out))
    inputs = _image_inputs(5)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    with torch.no_grad():
        ref = hf(**t).logits.numpy()
        got = loaded(**t).logits.numpy()
    ours_logits = ours(**inputs).logits.asnumpy()
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-5 * scale       # the saved weights are the loaded ones
    assert np.abs(ours_logits - got).max() <= 1e-5 * scale  # and our model computes what transformers does
    assert loaded.generation_config.eos_token_id == [151645]
    # HF key names on disk, the same set transformers writes
    from mindspeed_ms.checkpoint.safetensors_io import SafetensorsFile
    assert set(SafetensorsFile(str(out / "model.safetensors")).keys()) == \
        set(SafetensorsFile(os.path.join(d, "model.safetensors")).keys())
    # an existing checkpoint is not replaced unless asked
    with pytest.raises(ValueError, match="overwrite=True"):
        ours.save_pretrained(out)
    ours.save_pretrained(out, overwrite=True)
    again = Qwen2VLForConditionalGeneration.from_pretrained(str(out))
    np.testing.assert_array_equal(again(**inputs).logits.asnumpy(), ours_logits)
