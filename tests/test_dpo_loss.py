"""DPO loss and reward metrics equal a direct numpy implementation of the formula."""
import numpy as np
import pytest
from mindspore import Tensor

from mindspeed_ms.rl.dpo_loss import DPOLoss, check_dpo_options
from helpers.numerics import assert_close_scaled


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def _reference(pc, pr, rc, rr, n_tok, beta, eps, ftx):
    d = (pc - pr) - (rc - rr)
    losses = -_logsigmoid(beta * d) * (1 - eps) - _logsigmoid(-beta * d) * eps
    if ftx > 0:
        losses = losses + ftx * (-pc / n_tok)
    rc_, rr_ = beta * (pc - rc), beta * (pr - rr)
    return losses.mean(), (rc_.mean(), rr_.mean(), (rc_ - rr_).mean(), (rc_ > rr_).mean())


@pytest.mark.parametrize("beta,eps,ftx", [(0.1, 0.0, 0.0), (0.5, 0.2, 0.0), (0.1, 0.1, 0.3), (2.0, 0.5, 1.0)])
def test_dpo_matches_formula(beta, eps, ftx):
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(-40, 10, size=6).astype(np.float32) for _ in range(4))
    n_tok = rng.integers(5, 30, size=6).astype(np.float32)
    loss, metrics = DPOLoss(beta, eps, ftx)(*(Tensor(a) for a in (pc, pr, rc, rr, n_tok)))
    ref_loss, ref_metrics = _reference(pc, pr, rc, rr, n_tok, beta, eps, ftx)
    assert_close_scaled(loss.asnumpy(), ref_loss, 1e-5)
    for got, want in zip(metrics, ref_metrics):
        assert_close_scaled(got.asnumpy(), want, 1e-5)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(loss_type="ipo", label_smoothing=0.0, beta=0.1), "supported: sigmoid"),
    (dict(loss_type="sigmoid", label_smoothing=0.6, beta=0.1), r"\[0, 0.5\]"),
    (dict(loss_type="sigmoid", label_smoothing=-0.1, beta=0.1), r"\[0, 0.5\]"),
])
def test_dpo_bad_options(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        check_dpo_options(**kwargs)
