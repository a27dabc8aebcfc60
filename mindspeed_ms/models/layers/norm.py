"""LayerNorm and RMSNorm from CPU-capable primitives (the fused `mint` / `ops.rms_norm` kernels
have no CPU implementation); statistics are computed in fp32 as in HF."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import One, Zero, initializer

from mindspeed_ms.models.layers.tiling import tile_like


class LayerNorm(nn.Cell):
    def __init__(self, dim, eps=1e-6, dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(initializer(One(), (dim,), dtype), name="weight")
        self.bias = Parameter(initializer(Zero(), (dim,), dtype), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.cast = ops.Cast()

    def construct(self, x):
        dtype = x.dtype
        y, _, _ = self.layer_norm(self.cast(x, ms.float32), self.cast(self.weight, ms.float32),
                                  self.cast(self.bias, ms.float32))
        return self.cast(y, dtype)


class RMSNorm(nn.Cell):
    """weight * x / sqrt(mean(x^2) + eps), the variance in fp32 (Qwen2RMSNorm)."""

    def __init__(self, dim, eps=1e-6, dtype=ms.float32):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer(One(), (dim,), dtype), name="weight")
        self.square = ops.Square()
        self.mean = ops.ReduceMean(keep_dims=True)
        self.add = ops.Add()
        self.rsqrt = ops.Rsqrt()
        self.mul = ops.Mul()
        self.mul_weight = ops.Mul()
        self.cast = ops.Cast()
        # CPU: the [.., 1] statistic and the [H] weight tiled to x's shape (layers/tiling.py); the
        # shard plan turns this off for its strategies
        self.tile_broadcasts = True

    def construct(self, x):
        dtype = x.dtype
        x = self.cast(x, ms.float32)
        var = self.mean(self.square(x), -1)
        scale = self.rsqrt(self.add(var, self.eps))
        weight = self.weight
        if self.tile_broadcasts:
            scale = tile_like(scale, x)
            weight = tile_like(ops.reshape(weight, (1,) * (x.ndim - 1) + (-1,)), x)
        x = self.mul(x, scale)
        return self.mul_weight(weight, self.cast(x, dtype))
