"""In-graph rotary embeddings: the ViT's 2-D rope and the text decoder's M-RoPE.

Positions arrive as integer tensors built on the host (`rope.py`); here they become cos/sin in
fp32 and are applied as `x*cos + rotate_half(x)*sin`, exactly as HF does.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindspeed_ms.models.layers.tiling import tile_like
from mindspeed_ms.models.qwen2vl.rope import text_rope_inv_freq, vision_rope_inv_freq


def rotate_half(x):
    half = x.shape[-1] // 2
    return ops.concat((-x[..., half:], x[..., :half]), -1)


def apply_rotary(x, cos, sin, tile=False):
    """x * cos + rotate_half(x) * sin in fp32, cast back to x's dtype. `tile` (CPU): cos/sin are
    tiled to x's shape first (same-shape products, models/layers/tiling.py)."""
    dtype = x.dtype
    x = ops.cast(x, ms.float32)
    if tile:
        cos, sin = tile_like(cos, x), tile_like(sin, x)
    return ops.cast(x * cos + rotate_half(x) * sin, dtype)


class VisionRotary(nn.Cell):
    """cos/sin [N, head_dim] from (h, w) patch positions [N, 2] (HF VisionRotaryEmbedding)."""

    def __init__(self, head_dim, theta=10000.0):
        super().__init__()
        self.inv_freq = Tensor(vision_rope_inv_freq(head_dim, theta).reshape(1, -1))

    def construct(self, pos):
        pos = ops.cast(pos, ms.float32)
        freqs = ops.concat((pos[:, 0:1] * self.inv_freq, pos[:, 1:2] * self.inv_freq), -1)
        emb = ops.concat((freqs, freqs), -1)
        return ops.cos(emb), ops.sin(emb)


def mrope_selector(mrope_section, head_dim):
    """[3, head_dim/2] one-hot: rotary frequency j uses position row (t, h or w) of its section."""
    sel = np.zeros((3, head_dim // 2), dtype=np.float32)
    start = 0
    for row, width in enumerate(mrope_section):
        sel[row, start:start + width] = 1.0
        start += width
    return sel


class MultimodalRotary(nn.Cell):
    """cos/sin [B, 1, S, head_dim] from M-RoPE positions [3, B, S] (HF Qwen2VLRotaryEmbedding +
    apply_multimodal_rotary_pos_emb). Selecting the position row per frequency before taking the
    product is the same as HF's section-wise cut of cos/sin (the doubled sections mirror the halves)."""

    def __init__(self, head_dim, mrope_section, theta=1000000.0):
        super().__init__()
        self.inv_freq = Tensor(text_rope_inv_freq(head_dim, theta))
        self.selector = Tensor(mrope_selector(mrope_section, head_dim))
        self.matmul = ops.MatMul()

    def construct(self, position_ids):
        _, b, s = position_ids.shape
        pos = ops.cast(ops.transpose(position_ids, (1, 2, 0)), ms.float32).reshape(b * s, 3)
        pos = self.matmul(pos, self.selector).reshape(b, 1, s, -1)
        freqs = pos * self.inv_freq
        emb = ops.concat((freqs, freqs), -1)
        return ops.cos(emb), ops.sin(emb)
