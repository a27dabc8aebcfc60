"""The Qwen2.5-VL ViT: the Qwen2-VL blocks with RMSNorm and a gated SiLU MLP (with biases), window
attention in all layers but `fullatt_block_indexes`, and the merger with RMSNorm.

Window attention needs no permutation inside the graph: the batch layout (`inputs.py`) hands the
patches over in window order (HF's `get_window_index`), with two segment rows, so a windowed
layer masks by window and a full-attention layer by image/frame; the inverse permutation is folded
into `vision_gather_index`. Parameter names are MindSpeed-MM's (`blocks.layers.N.mlp.linear_fc1` =
concat(gate_proj, up_proj), `linear_fc2` = down_proj)."""
import mindspore as ms
from mindspore import nn

from mindspeed_ms.models.layers import RMSNorm
from mindspeed_ms.models.layers.gated_mlp import GatedMLP
from mindspeed_ms.models.qwen2vl.projector import ImageEncoder, VisionProjector
from mindspeed_ms.models.qwen2vl.vision import Qwen2VisionEncoder, VisionBlock, segment_mask


class Qwen2_5VisionBlock(VisionBlock):
    norm_cls = RMSNorm

    @staticmethod
    def make_mlp(cfg, dtype):
        return GatedMLP(cfg.hidden_size, cfg.ffn_hidden_size, True, cfg.init_method_std, dtype)


class WindowedVisionBlocks(nn.Cell):
    """Layer i attends within its image/frame if i is in `fullatt_block_indexes`, else within its window."""

    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.layers = nn.CellList([Qwen2_5VisionBlock(cfg, backend, dtype) for _ in range(cfg.num_layers)])
        full = set(cfg.fullatt_block_indexes)
        self.full_attention = tuple(i in full for i in range(cfg.num_layers))

    def construct(self, x, cos, sin, full_mask, window_mask):
        for i, layer in enumerate(self.layers):
            if self.full_attention[i]:
                x = layer(x, cos, sin, full_mask)
            else:
                x = layer(x, cos, sin, window_mask)
        return x


class Qwen2_5VisionEncoder(Qwen2VisionEncoder):
    """pixel patches in window order [N, C*T*P*P] -> patch features [N, E].

    `vision_segment_ids` [2, N]: row 0 the image/frame of each patch, row 1 its window;
    `vision_cu_seqlens` (flash backend) [2, K]: the block ends of the two rows."""
    blocks_cls = WindowedVisionBlocks

    def construct(self, pixel_values, vision_pos_ids, vision_segment_ids, vision_cu_seqlens=None):
        self.check_flash_inputs(vision_cu_seqlens)
        x = self.patch_embed(pixel_values)
        cos, sin = self.rotary_tables(vision_pos_ids)
        if self.flash:
            return self.blocks(x, cos, sin, vision_cu_seqlens[0], vision_cu_seqlens[1])
        return self.blocks(x, cos, sin, segment_mask(vision_segment_ids[0]), segment_mask(vision_segment_ids[1]))


class Qwen2_5VisionProjector(VisionProjector):
    norm_cls = RMSNorm


class Qwen2_5ImageEncoder(ImageEncoder):
    encoder_cls = Qwen2_5VisionEncoder
    projector_cls = Qwen2_5VisionProjector
