"""DPO loss (sigmoid form with label smoothing and an optional SFT term) and its reward metrics.

With summed label log-probs of the policy (pi) and the frozen reference (ref):
    d = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
    loss = -logsigmoid(beta * d) * (1 - eps) - logsigmoid(-beta * d) * eps
           + pref_ftx * (-pi_chosen / chosen_token_count)      (only when pref_ftx > 0)
rewards/chosen = beta * (pi_chosen - ref_chosen), rewards/rejected likewise; margins = difference;
accuracies = fraction of pairs with rewards/chosen > rewards/rejected.
"""
from mindspore import nn, ops

SUPPORTED_LOSS_TYPES = ("sigmoid",)


def check_dpo_options(loss_type, label_smoothing, beta):
    """Validate the DPO flags before any compute (messages name the flag and the allowed range)."""
    if loss_type not in SUPPORTED_LOSS_TYPES:
        raise ValueError(f"--dpo-loss-type {loss_type!r} is not supported; supported: {', '.join(SUPPORTED_LOSS_TYPES)}")
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"--dpo-label-smoothing must be in [0, 0.5], got {label_smoothing}")
    if beta <= 0:
        raise ValueError(f"--dpo-beta must be > 0, got {beta}")


class DPOLoss(nn.Cell):
    """Per-batch DPO loss; inputs are [n] summed log-probs of the n chosen / n rejected samples."""

    def __init__(self, beta=0.1, label_smoothing=0.0, pref_ftx=0.0, loss_type="sigmoid"):
        super().__init__()
        check_dpo_options(loss_type, label_smoothing, beta)
        self.beta = beta
        self.eps = label_smoothing
        self.pref_ftx = pref_ftx

    def construct(self, pi_chosen, pi_rejected, ref_chosen, ref_rejected, chosen_token_count):
        d = (pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)
        losses = -ops.logsigmoid(self.beta * d) * (1.0 - self.eps) - ops.logsigmoid(-self.beta * d) * self.eps
        if self.pref_ftx > 0:
            losses = losses + self.pref_ftx * (-pi_chosen / chosen_token_count)
        reward_chosen = self.beta * ops.stop_gradient(pi_chosen - ref_chosen)
        reward_rejected = self.beta * ops.stop_gradient(pi_rejected - ref_rejected)
        metrics = (reward_chosen.mean(), reward_rejected.mean(), (reward_chosen - reward_rejected).mean(),
                   (reward_chosen > reward_rejected).astype(pi_chosen.dtype).mean())
        return losses.mean(), metrics
