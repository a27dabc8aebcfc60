"""Token choice: greedy, and sampling filters equal to HF transformers' logits warpers."""
import numpy as np
import pytest

from mindspeed_ms.inference.sampling import SamplingConfig, TokenChooser, filtered_log_probs

torch = pytest.importorskip("torch")
from transformers.generation.logits_process import (  # noqa: E402
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 0.9, 0), (0.7, 0.5, 0), (1.3, 1.0, 5),
                                                     (0.9, 0.8, 20), (2.0, 0.3, 0)])
def test_filter_matches_hf_warpers(temperature, top_p, top_k):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(3, 50)).astype(np.float32)
    t = torch.from_numpy(logits.copy())
    t = TemperatureLogitsWarper(temperature)(None, t)
    if top_k:
        t = TopKLogitsWarper(top_k)(None, t)
    if top_p < 1.0:
        t = TopPLogitsWarper(top_p)(None, t)
    ref = torch.log_softmax(t.double(), dim=-1).numpy()
    ours = filtered_log_probs(logits, temperature, top_p, top_k)
    assert np.array_equal(np.isinf(ours), np.isinf(ref))
    kept = ~np.isinf(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], atol=1e-5)
    assert (kept.sum(-1) < 50).all() or (top_p == 1.0 and not top_k)


def test_greedy_is_argmax():
    logits = np.array([[0.1, 2.0, -1.0], [5.0, 4.0, 4.9]], np.float32)
    assert TokenChooser(SamplingConfig())(logits).tolist() == [1, 0]


def test_sampling_frequencies_and_seed():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    cfg = SamplingConfig(do_sample=True, temperature=1.0, top_p=0.9, seed=3)
    chooser = TokenChooser(cfg)
    draws = np.array([chooser(logits)[0] for _ in range(4000)])
    # top_p=0.9 drops the 0.05 token; the rest keep their renormalised shares
    assert not (draws == 3).any()
    freq = np.bincount(draws, minlength=4)[:3] / len(draws)
    np.testing.assert_allclose(freq, np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.03)
    again = TokenChooser(cfg)
    assert [again(logits)[0] for _ in range(4000)] == draws.tolist()


def test_bad_sampling_flags():
    with pytest.raises(ValueError, match="--temperature"):
        SamplingConfig(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="--top-p"):
        SamplingConfig(do_sample=True, top_p=1.5)
