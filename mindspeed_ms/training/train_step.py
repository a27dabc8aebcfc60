"""The compiled pieces of a training step.

`MicroStep` is one GRAPH-mode Cell doing forward + backward of a micro-batch and adding the
gradients into fp32 accumulators (a whole-step Cell: much faster on CPU than ms.jit around
value_and_grad, see the reference notes). MindSpore compiles it once per input shape, and the
collator pads to a few buckets, so a run compiles a handful of graphs; `compilations` reports
how many.

`OptimizerStep` is compiled once: it sums the accumulated gradients over the data-parallel ranks
(AllReduce; the loss weights already hold the 1/N normalisation, so a sum is the right reduction),
computes the global gradient norm, clips, and applies AdamW (`ApplyGradients`, which `TrainStep`
also ends with when there is one micro-batch per step).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from mindspeed_ms.training.optimizer import AdamW, GradNormClip

# Batch keys fed to the loss Cell, in this order (docs/architecture.md, the batch contract; the
# positional order of Qwen2VLForConditionalGeneration.construct).
TRAIN_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision_pos_ids",
              "vision_segment_ids", "vision_gather_index", "vision_token_mask", "labels", "loss_weights")

accumulate_grad = ops.MultitypeFuncGraph("accumulate_grad")


@accumulate_grad.register("Tensor", "Tensor", "Tensor")
def _acc_one(first, acc, grad):
    grad = grad.astype(ms.float32)
    # select, not acc*0+grad: a stale inf/nan in the buffer must not leak into the next step
    return ops.assign(acc, ops.select(first, grad, acc + grad))


class LossCell(nn.Cell):
    """The model's weighted loss alone (logits dropped), parameter names unchanged (MM names)."""

    def __init__(self, model: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = model

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels, loss_weights, loss_index=None):
        # train_loss: the same loss without materialising the logits (fused chunked output layer + CE);
        # loss_index (CPU trainer): only the rows that carry a loss go through the output layer
        return self.network.train_loss(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                                       vision_segment_ids, vision_gather_index, vision_token_mask, labels,
                                       loss_weights, None, loss_index)


class MicroStep(nn.Cell):
    """forward + backward of one micro-batch; gradients added into `accum` (overwritten when
    `first` is True). Returns the (weighted) loss of the micro-batch."""

    def __init__(self, loss_cell: nn.Cell, params: Sequence[Parameter], accum: ParameterTuple):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.weights = ParameterTuple(params)
        self.accum = accum
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()

    def construct(self, first, *batch):
        loss = self.loss_cell(*batch)
        sens = ops.ones_like(loss)
        grads = self.grad(self.loss_cell, self.weights)(*batch, sens)
        done = self.hyper_map(ops.partial(accumulate_grad, first), self.accum, grads)
        return ops.depend(loss, done)

    @property
    def compilations(self) -> int:
        """Graphs MindSpore compiled for this Cell so far (one per distinct input signature)."""
        return len(self.compile_cache)


class ApplyGradients(nn.Cell):
    """What follows the backward pass in both step graphs: AllReduce (sum) of the gradients and of
    `stats` over DP (the loss weights already hold the 1/N normalisation, so a sum is the right
    reduction), global norm, clipping, AdamW. Returns (stats summed over DP, norm)."""

    def __init__(self, optimizer: AdamW, clip_grad: float, dp_size: int):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.clip = GradNormClip(clip_grad)
        self.dp_size = dp_size
        if dp_size > 1:
            self.allreduce = ops.AllReduce(op=ops.ReduceOp.SUM)
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, stats, decay_factor, step_size, bc2_sqrt):
        if self.dp_size > 1:
            grads = self.hyper_map(self.allreduce, grads)
            stats = self.allreduce(stats)
        grads, norm = self.clip(grads)
        updated = self.optimizer(grads, decay_factor, step_size, bc2_sqrt)
        return ops.depend(stats, updated), norm


class OptimizerStep(nn.Cell):
    """The accumulated gradients through `ApplyGradients`. Returns (loss summed over DP, norm)."""

    def __init__(self, accum: ParameterTuple, optimizer: AdamW, clip_grad: float, dp_size: int):
        super().__init__(auto_prefix=False)
        self.accum = accum
        self.update = ApplyGradients(optimizer, clip_grad, dp_size)
        self.hyper_map = ops.HyperMap()

    def construct(self, loss, decay_factor, step_size, bc2_sqrt):
        grads = self.hyper_map(ops.partial(ops.mul, 1.0), self.accum)   # read the buffers into values
        return self.update(grads, loss, decay_factor, step_size, bc2_sqrt)


class TrainStep(nn.Cell):
    """The whole step of one micro-batch per step (gradient accumulation 1, the common CPU case):
    forward + backward and `ApplyGradients` in one graph. Without accumulation buffers nothing is
    copied in or out of them: for the small benchmark config that saves ~8 passes over the
    151,936 x H embedding gradient and its buffer.
    Returns ([loss, tokens] summed over DP, gradient norm)."""

    def __init__(self, loss_cell: nn.Cell, params: Sequence[Parameter], optimizer: AdamW, clip_grad: float,
                 dp_size: int):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.weights = ParameterTuple(params)
        self.update = ApplyGradients(optimizer, clip_grad, dp_size)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, decay_factor, step_size, bc2_sqrt, tokens, *batch):
        loss = self.loss_cell(*batch)
        grads = self.grad(self.loss_cell, self.weights)(*batch, ops.ones_like(loss))
        return self.update(grads, ops.stack((loss, tokens)), decay_factor, step_size, bc2_sqrt)

    @property
    def compilations(self) -> int:
        return len(self.compile_cache)


def make_accumulators(params: Sequence[Parameter]) -> ParameterTuple:
    return ParameterTuple([Parameter(ops.zeros(p.shape, ms.float32), name="grad_acc." + p.name,
                                     requires_grad=False) for p in params])


@contextlib.contextmanager
def inference_mode(cell: nn.Cell):
    """Every sub-cell of `cell` in training mode (the LoRA adapters' dropout) is switched to
    inference mode for the block, then back. GRAPH mode reads the mode when a top-level Cell is
    compiled, so a validation Cell first called inside the block compiles without dropout while the
    training step Cells, compiled and called outside it, keep theirs, and no graph recompiles. Only
    the flagged cells are touched (not `set_train`, which would also switch their children)."""
    training = [c for _, c in cell.cells_and_names() if c.training]
    for c in training:
        c.add_flags(training=False)
    try:
        yield
    finally:
        for c in training:
            c.add_flags(training=True)


class ForwardOnly(nn.Cell):
    """Validation: the weighted loss of a micro-batch, no gradients. It calls the model itself
    with explicit arguments (not the LossCell that MicroStep differentiates): MindSpore 2.10 fails
    to compile a second top-level graph through the same *args wrapper."""

    def __init__(self, loss_cell: LossCell):
        super().__init__(auto_prefix=False)
        self.model = loss_cell.network

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels, loss_weights):
        loss, _ = self.model(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                             vision_segment_ids, vision_gather_index, vision_token_mask, labels, loss_weights)
        return loss

    @property
    def compilations(self) -> int:
        return len(self.compile_cache)


class AllReduceSum(nn.Cell):
    """Sum a tensor over the data-parallel ranks (validation loss, per-token counts)."""

    def __init__(self):
        super().__init__()
        self.op = ops.AllReduce(op=ops.ReduceOp.SUM)

    def construct(self, x):
        return self.op(x)
