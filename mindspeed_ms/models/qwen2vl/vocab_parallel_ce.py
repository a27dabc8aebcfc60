"""log softmax(logits)[target] written so the vocabulary axis can be split over tensor-parallel ranks.

MindSpore's LogSoftmax / GatherD keep their axis whole, so a vocab-split logits tensor would be
gathered over tp before them. Megatron's vocab-parallel cross-entropy avoids that with a max /
sum-exp decomposition, which this Cell spells out with one primitive per step (attributes, so the
shard plan splits the vocab axis on each; MindSpore inserts an AllReduce where a split axis is
reduced):

    m      = max_v x                 local max -> AllReduce(max) = global max
    z      = x - m
    lse    = log sum_v exp(z)        local sum-exp -> AllReduce(sum) = global sum
    picked = sum_v z * onehot(t)     non-zero only on the shard owning t -> AllReduce(sum)
    log p(t) = picked - lse

Rows are batch x tokens flattened (the 2-D layout the shard plan uses for the linears).
"""
import mindspore as ms
from mindspore import Tensor, nn, ops


class VocabParallelLogProb(nn.Cell):
    def __init__(self):
        super().__init__()
        self.reduce_max = ops.ReduceMax(keep_dims=True)
        self.sub = ops.Sub()
        self.exp = ops.Exp()
        self.sum_exp = ops.ReduceSum(keep_dims=False)
        self.log = ops.Log()
        self.onehot = ops.OneHot(axis=-1)
        self.mul_pick = ops.Mul()
        self.sum_pick = ops.ReduceSum(keep_dims=False)
        self.reshape = ops.Reshape()
        self.on_value = Tensor(1.0, ms.float32)
        self.off_value = Tensor(0.0, ms.float32)

    def construct(self, logits, target):
        """logits [..., V] fp32; target [...] int32 in [0, V). Returns log p(target) [...] fp32."""
        lead = target.shape
        vocab = logits.shape[-1]
        x = self.reshape(logits, (-1, vocab))
        # the max only shifts for stability; its gradient cancels, so none flows through it
        m = ops.stop_gradient(self.reduce_max(x, -1))
        z = self.sub(x, m)
        lse = self.log(self.sum_exp(self.exp(z), -1))
        onehot = self.onehot(self.reshape(target, (-1,)), vocab, self.on_value, self.off_value)
        picked = self.sum_pick(self.mul_pick(z, onehot), -1)
        return self.reshape(picked - lse, lead)
