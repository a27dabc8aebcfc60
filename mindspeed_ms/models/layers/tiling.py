"""Same-shape operands for element-wise ops on CPU.

MindSpore's CPU kernels for broadcasting binary ops ([.., S, S] - [.., S, 1], [T, H] * [H], ...)
keep a private buffer of several times their output for the life of the graph and, with dynamic
shapes, run ~5x slower than the same op on operands of equal shape (measured on [2, 8, 640, 640]:
~75 MB kept beyond the 26 MB output; 20 `Add`s of [1280, 1408] + [1408] grew RSS by 592 MB). The
layers therefore tile the smaller operand to the larger one's shape first (`tile_like`) when their
`tile_broadcasts` flag is on; the shard plan turns the flag off on Ascend, where the sharded
broadcasting primitives must run.
"""
from mindspore import nn, ops


def tile_like(small, like):
    """`small` tiled to the shape of `like` (same rank; every dim of `small` is 1 or equal)."""
    return ops.tile(small, tuple(like.shape[i] // small.shape[i] for i in range(like.ndim)))


class TiledSoftmax(nn.Cell):
    """Softmax over the last axis whose gradient uses same-shape ops only:
    dx = y * (dy - tile(sum(dy * y))) instead of MindSpore's broadcast of the row sum."""

    def __init__(self):
        super().__init__()
        self.softmax = ops.Softmax(axis=-1)
        self.row_sum = ops.ReduceSum(keep_dims=True)

    def construct(self, x):
        return self.softmax(x)

    def bprop(self, x, out, dout):
        return (out * (dout - tile_like(self.row_sum(dout * out, -1), dout)),)
