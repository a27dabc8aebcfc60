"""The compiled pieces of a sharded (semi-auto parallel, Ascend) training step.

Unlike the CPU/data-parallel step (`train_step.py`: a Python loop over micro-batches, explicit
accumulators and a DP AllReduce), one Cell does the whole step here, because MindSpore's parallel
passes need to see it whole: the micro-batch wrapper (`Pipeline` with pp > 1, `GradAccumulation`
otherwise) cuts the step's inputs into micro-batches, the gradients of the logical (global) loss
come out already reduced over the data-parallel ranks, and the optimizer states can be sharded
(`AutoParallel.hsdp`). The step is wrapped in `AutoParallel` by `parallel.train_setup`.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from mindspeed_ms.parallel.tied_grads import TiedGradSum
from mindspeed_ms.training.optimizer import AdamW, GradNormClip


class ShardedLossCell(nn.Cell):
    """The model's weighted training loss with the sharded step's input layout: position_ids
    batch-first ([B, 3, S], so micro-batch slicing along axis 0 cuts them by sample) and the flash
    ViT's `vision_cu_seqlens` as the last input (omitted by the matmul backend)."""

    def __init__(self, model: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = model
        self.transpose = ops.Transpose()

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels, loss_weights, vision_cu_seqlens=None):
        position_ids = self.transpose(position_ids, (1, 0, 2))
        return self.network.train_loss(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                                       vision_segment_ids, vision_gather_index, vision_token_mask, labels,
                                       loss_weights, vision_cu_seqlens)


class ShardedTrainStep(nn.Cell):
    """loss -> gradients (pipeline-reduced with pp > 1) -> tied-embedding sum -> clip -> AdamW.

    The optimizer's step scalars are Parameters set from the host before each call (not inputs),
    so the step's inputs are exactly the batch and the data strategy covers all of them.
    Returns (loss, gradient norm)."""

    def __init__(self, net: nn.Cell, params: Sequence[Parameter], optimizer: AdamW, clip_grad: float,
                 tied_pairs, pipeline: bool):
        super().__init__(auto_prefix=False)
        self.net = net
        self.weights = ParameterTuple(params)
        self.optimizer = optimizer
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.pipeline = pipeline
        if pipeline:
            from mindspore.parallel.nn import PipelineGradReducer
            self.grad_reducer = PipelineGradReducer(self.weights)
        self.tied = TiedGradSum(tied_pairs)
        self.clip = GradNormClip(clip_grad)
        self.hyper = ParameterTuple([Parameter(Tensor(0.0, ms.float32), name=f"sharded_step.hyper{i}",
                                               requires_grad=False) for i in range(3)])

    def set_hyper(self, scalars):
        for p, value in zip(self.hyper, scalars):
            p.set_data(value)

    def construct(self, *batch):
        loss = self.net(*batch)
        grads = self.grad(self.net, self.weights)(*batch, ops.ones_like(loss))
        if self.pipeline:
            grads = self.grad_reducer(grads)
        grads = self.tied(grads)
        grads, norm = self.clip(grads)
        updated = self.optimizer(grads, self.hyper[0], self.hyper[1], self.hyper[2])
        return ops.depend(loss, updated), norm

    @property
    def compilations(self) -> int:
        return len(self.compile_cache)


class ShardedForward(nn.Cell):
    """Validation loss through the same micro-batch wrapper, no gradients."""

    def __init__(self, net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, *batch):
        return self.net(*batch)

    @property
    def compilations(self) -> int:
        return len(self.compile_cache)
