"""The compiled pieces of a DPO step.

A pairwise micro-batch holds 2n rows: the n chosen sequences, then the n rejected ones (the
`qwen2vl_dpo` collator). `SequenceLogProbs` gives each row's summed label log-prob (shifted
labels, -100 ignored) and its label-token count. The reference log-probs are computed first, in
their own forward-only graph (`SequenceLogProbs` over the frozen reference, or over the policy with
its LoRA adapters gated off), and enter `DPOLossCell` as an input, so no gradient can reach them.
`DPOMicroStep` does forward + backward of the policy and adds the gradients into the same fp32
accumulators the SFT step uses; the optimizer step is the SFT one.

Every Cell spells out its arguments (no *args): MindSpore 2.10 fails to compile a second top-level
graph through a shared *args wrapper.
"""
from mindspore import ParameterTuple, nn, ops

from mindspeed_ms.models.qwen2vl.loss import CausalLMLoss
from mindspeed_ms.training.train_step import TRAIN_KEYS, accumulate_grad

# batch keys the log-prob cells take, in order: the SFT keys without loss_weights (DPO weighs
# whole sequences itself)
LOGP_KEYS = TRAIN_KEYS[:-1]


class SequenceLogProbs(nn.Cell):
    """[B] summed log-probs of each row's labels and [B] label-token counts."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model
        self.nll = CausalLMLoss()

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels):
        logits = self.model(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                            vision_segment_ids, vision_gather_index, vision_token_mask)
        nll, valid = self.nll.token_nll(logits, labels)
        return -nll.sum(1), valid.sum(1)


class DPOLossCell(nn.Cell):
    """Policy log-probs -> (weight * DPO loss, rewards/chosen, rewards/rejected, rewards/margins,
    rewards/accuracies). `weight` carries the 1 / (micro-batches x DP) of gradient accumulation."""

    def __init__(self, model, dpo_loss):
        super().__init__(auto_prefix=False)
        self.logps = SequenceLogProbs(model)
        self.dpo = dpo_loss

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels, ref_logps, weight):
        logps, counts = self.logps(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                                   vision_segment_ids, vision_gather_index, vision_token_mask, labels)
        # rows are [chosen..., rejected...]: a reshape splits them, also when the batch dim is dynamic
        pol, ref, cnt = ops.reshape(logps, (2, -1)), ops.reshape(ref_logps, (2, -1)), ops.reshape(counts, (2, -1))
        loss, metrics = self.dpo(pol[0], pol[1], ref[0], ref[1], cnt[0])
        return loss * weight, metrics[0], metrics[1], metrics[2], metrics[3]


class DPOMicroStep(nn.Cell):
    """Forward + backward of one pairwise micro-batch; gradients added into `accum` (overwritten
    when `first`). Returns the weighted loss and the four reward metrics."""

    def __init__(self, loss_cell, params, accum):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.weights = ParameterTuple(params)
        self.accum = accum
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, first, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                  vision_segment_ids, vision_gather_index, vision_token_mask, labels, ref_logps, weight):
        out = self.loss_cell(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                             vision_segment_ids, vision_gather_index, vision_token_mask, labels, ref_logps, weight)
        # metrics are stop-gradient'ed in DPOLoss: only the loss carries a sensitivity
        sens = (ops.ones_like(out[0]), ops.zeros_like(out[1]), ops.zeros_like(out[2]), ops.zeros_like(out[3]),
                ops.zeros_like(out[4]))
        grads = self.grad(self.loss_cell, self.weights)(input_ids, attention_mask, position_ids, pixel_values,
                                                        vision_pos_ids, vision_segment_ids, vision_gather_index,
                                                        vision_token_mask, labels, ref_logps, weight, sens)
        done = self.hyper_map(ops.partial(accumulate_grad, first), self.accum, grads)
        return ops.depend(out[0], done), out[1], out[2], out[3], out[4]

    @property
    def compilations(self) -> int:
        return len(self.compile_cache)


class DPOForward(nn.Cell):
    """Validation: the DPO loss and metrics of a micro-batch, no gradients."""

    def __init__(self, loss_cell):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels, ref_logps, weight):
        return self.loss_cell(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                              vision_segment_ids, vision_gather_index, vision_token_mask, labels, ref_logps, weight)

    @property
    def compilations(self) -> int:
        return len(self.compile_cache)


class ReferenceLogProbs(nn.Cell):
    """Forward-only summed label log-probs of the reference model (its own compiled graph)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.logps = SequenceLogProbs(model)

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels):
        logps, _ = self.logps(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                              vision_segment_ids, vision_gather_index, vision_token_mask, labels)
        return ops.stop_gradient(logps)
