"""Shifted causal-LM cross entropy in fp32 (HF `ForCausalLMLoss` semantics, -100 ignored)."""
import mindspore as ms
from mindspore import nn, ops

from mindspeed_ms.models.qwen2vl.vocab_parallel_ce import VocabParallelLogProb

IGNORE_INDEX = -100


class CausalLMLoss(nn.Cell):
    """Position s of `logits` predicts `labels[:, s+1]`.

    Without `loss_weights`: mean over valid (label != -100) shifted tokens (HF); a batch with no
    valid token gives 0 instead of NaN. With `loss_weights` [B, S]: `sum(ce * loss_weights)` over
    valid tokens, where `loss_weights[:, s]` weights the prediction of `labels[:, s+1]` (the same
    shifted alignment; the last column is unused). This carries the per-token / per-sample loss
    modes and gradient-accumulation scaling decided by the training loop.

    `vocab_parallel` (set by the shard plan with tp > 1): the log-probability of the target comes
    from `VocabParallelLogProb`, a max / sum-exp decomposition whose vocab axis can stay split over
    tp (no gather of the logits); off (CPU, tp 1): LogSoftmax + GatherD, cheaper without a split.
    """

    def __init__(self):
        super().__init__()
        self.log_softmax = ops.LogSoftmax(axis=-1)
        self.gather = ops.GatherD()
        self.cast = ops.Cast()
        self.vocab_parallel = False
        self.vocab_ce = VocabParallelLogProb()

    def shifted_targets(self, labels):
        """(target [B, S] int32 of the prediction at each position, 0 where ignored; valid [B, S] fp32)."""
        b, s = labels.shape
        ignore = ops.full((b, 1), IGNORE_INDEX, dtype=labels.dtype)
        shifted = ops.concat((labels[:, 1:], ignore), 1)
        valid = shifted != IGNORE_INDEX
        safe = ops.select(valid, shifted, ops.zeros_like(shifted))
        return self.cast(safe, ms.int32), self.cast(valid, ms.float32)

    def token_nll(self, logits, labels):
        """Per-position negative log-likelihood [B, S] and validity mask [B, S] (fp32)."""
        safe, validf = self.shifted_targets(labels)
        if self.vocab_parallel:
            picked = self.vocab_ce(self.cast(logits, ms.float32), safe)
        else:
            logp = self.log_softmax(self.cast(logits, ms.float32))
            picked = self.gather(logp, 2, ops.expand_dims(safe, -1)).squeeze(-1)
        return -picked * validf, validf

    def construct(self, logits, labels, loss_weights=None):
        nll, valid = self.token_nll(logits, labels)
        if loss_weights is None:
            return nll.sum() / ops.maximum(valid.sum(), 1.0)
        return (nll * self.cast(loss_weights, ms.float32)).sum()
