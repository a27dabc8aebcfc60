"""Gated SiLU MLP (SwiGLU), the MindSpeed-MM fused layout: fc2(silu(gate) * up), fc1 = concat(gate, up).

Used by the Qwen2 LLM (no biases) and by the Qwen2.5-VL ViT (with biases: fc1's bias is
concat(gate_bias, up_bias)).

`glu_chunks` (set by the shard plan to tp): the fc1 output is read as `glu_chunks` consecutive
chunks, each concat(gate_r, up_r) - mm-convert's per-rank layout - so under tensor parallelism
every rank splits gate/up inside its own column slice and SwiGLU needs no communication. With
1 (the default) this is the plain [gate; up] layout of a tp1 checkpoint."""
import mindspore as ms
from mindspore import nn, ops

from mindspeed_ms.models.layers.activation import SiLU
from mindspeed_ms.models.layers.linear import Linear


class GatedMLP(nn.Cell):
    def __init__(self, hidden_size, ffn_hidden_size, bias=False, init_std=0.02, dtype=ms.float32):
        super().__init__()
        self.ffn = ffn_hidden_size
        self.glu_chunks = 1
        self.linear_fc1 = Linear(hidden_size, 2 * self.ffn, bias, init_std, dtype)
        self.activation = SiLU()
        self.mul = ops.Mul()
        self.linear_fc2 = Linear(self.ffn, hidden_size, bias, init_std, dtype)

    def construct(self, x):
        y = self.linear_fc1(x)
        if self.glu_chunks == 1:
            return self.linear_fc2(self.mul(self.activation(y[..., :self.ffn]), y[..., self.ffn:]))
        # [..., 2*ffn] -> [..., chunks, 2*ffn/chunks]: gate/up halves within each rank's chunk; the
        # product keeps rank r's ffn/chunks features in place r, as row-parallel fc2 expects
        lead = y.shape[:-1]
        width = self.ffn // self.glu_chunks
        y = ops.reshape(y, lead + (self.glu_chunks, 2 * width))
        h = self.mul(self.activation(y[..., :width]), y[..., width:])
        return self.linear_fc2(ops.reshape(h, lead + (self.ffn,)))
