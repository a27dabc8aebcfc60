"""The HF-style API on the Qwen2.5-VL family (the same mixin): greedy and beam-search `generate`
equal transformers' token for token, and `save_pretrained` loads in transformers with its logits."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import mindspore as ms  # noqa: E402

from helpers.hf_tiny_qwen2_5 import load_hf_reference, make_tiny_hf_checkpoint  # noqa: E402
from mindspeed_ms.models.qwen2_5vl.model import Qwen2_5_VLForConditionalGeneration  # noqa: E402

ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)


def test_qwen2_5_generate_beams_and_save_pretrained(tmp_path):
    d = make_tiny_hf_checkpoint(str(tmp_path / "hf"), seed=2)
    ours, hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(d), load_hf_reference(d)
    c = hf.config
    ids = np.array([[5, 6, c.vision_start_token_id] + [c.image_token_id] * 4 + [c.vision_end_token_id, 7, 8]])
    pix = np.random.default_rng(0).normal(size=(16, 3 * 2 * 14 * 14)).astype(np.float32)
    inputs = dict(input_ids=ids, attention_mask=np.ones_like(ids), pixel_values=pix,
                  image_grid_thw=np.array([[1, 4, 4]]))
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    for kw in (dict(max_new_tokens=8), dict(max_new_tokens=6, num_beams=3)):
        with torch.no_grad():
            ref = hf.generate(**t, do_sample=False, pad_token_id=0, **kw).numpy()
        np.testing.assert_array_equal(ours.generate(**inputs, pad_token_id=0, **kw), ref)
    ours.save_pretrained(tmp_path / "saved")
    loaded = load_hf_reference(str(tmp_path / "saved"))
    assert type(loaded) is type(hf)
    with torch.no_grad():
        want, got = hf(**t).logits.numpy(), loaded(**t).logits.numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
