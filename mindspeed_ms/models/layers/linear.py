"""Linear layer written with MindSpore primitives kept as attributes, so the parallel package can
set `.shard()` strategies on them from outside (column / row parallel) without touching the math."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, Zero, initializer


class Linear(nn.Cell):
    """y = x @ W^T + b with W stored [out_features, in_features] (the Megatron / HF layout).

    Inputs of any rank are flattened to 2-D for the MatMul, so a strategy set on `self.matmul`
    applies to every call site.
    """

    def __init__(self, in_features, out_features, has_bias=True, init_std=0.02, dtype=ms.float32):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.has_bias = has_bias
        self.weight = Parameter(initializer(Normal(init_std), (out_features, in_features), dtype), name="weight")
        if has_bias:
            self.bias = Parameter(initializer(Zero(), (out_features,), dtype), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.BiasAdd()      # not Add: on CPU a broadcasting Add keeps ~4x its output privately
        self.reshape = ops.Reshape()

    def construct(self, x):
        out_shape = x.shape[:-1] + (self.out_features,)
        x = self.reshape(x, (-1, self.in_features))
        y = self.matmul(x, self.weight)
        if self.has_bias:
            y = self.bias_add(y, self.bias)
        return self.reshape(y, out_shape)
