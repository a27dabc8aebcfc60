"""lnmlp: the PatchMerger (LayerNorm, merge each 2x2 patch group, Linear-GELU-Linear)."""
import mindspore as ms
from mindspore import nn, ops

from mindspeed_ms.models.layers import LayerNorm, Linear, get_activation
from mindspeed_ms.models.qwen2vl.vision import Qwen2VisionEncoder


class ProjectorMLP(nn.Cell):
    def __init__(self, merged_dim, ffn, out_dim, init_std=0.02, dtype=ms.float32):
        super().__init__()
        self.linear_fc1 = Linear(merged_dim, ffn, True, init_std, dtype)
        self.activation = get_activation("gelu")
        self.linear_fc2 = Linear(ffn, out_dim, True, init_std, dtype)

    def construct(self, x):
        return self.linear_fc2(self.activation(self.linear_fc1(x)))


class VisionProjector(nn.Cell):
    """[N, E] patch features -> [N / merge^2, hidden] LLM tokens. The processor orders patches so
    each merge x merge window is contiguous, so merging is a reshape."""

    norm_cls = LayerNorm  # Qwen2.5-VL: RMSNorm

    def __init__(self, cfg, spatial_merge_size, dtype=ms.float32):
        super().__init__()
        self.merged_dim = cfg.input_size * spatial_merge_size ** 2
        self.layernorm = self.norm_cls(cfg.input_size, cfg.layernorm_epsilon, dtype)
        self.encoder = ProjectorMLP(self.merged_dim, cfg.ffn_hidden_size, cfg.hidden_size, 0.02, dtype)

    def construct(self, x):
        return self.encoder(ops.reshape(self.layernorm(x), (-1, self.merged_dim)))


class ImageEncoder(nn.Cell):
    """`image_encoder`: vision encoder + projector (MindSpeed-MM's VisionModel)."""
    encoder_cls = Qwen2VisionEncoder
    projector_cls = VisionProjector

    def __init__(self, vision_cfg, projector_cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.encoder = self.encoder_cls(vision_cfg, backend, dtype)
        self.projector = self.projector_cls(projector_cfg, vision_cfg.spatial_merge_size, dtype)

    def construct(self, pixel_values, vision_pos_ids, vision_segment_ids, vision_cu_seqlens=None):
        return self.projector(self.encoder(pixel_values, vision_pos_ids, vision_segment_ids, vision_cu_seqlens))
