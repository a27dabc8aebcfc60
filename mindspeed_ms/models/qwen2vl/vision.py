"""qwen2vit: the Qwen2-VL vision transformer (HF `Qwen2VisionTransformerPretrainedModel` minus the
merger), with MindSpeed-MM parameter names (`patch_embed.proj`, `blocks.layers.N.*`)."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from mindspeed_ms.models.layers import MASK_VALUE, CoreAttention, LayerNorm, Linear, get_activation
from mindspeed_ms.models.qwen2vl.rotary import VisionRotary, apply_rotary


class PatchProjection(nn.Cell):
    """Conv3d with kernel == stride over one patch == one matmul with the flattened kernel.

    The weight keeps the Conv3d shape [E, C, T, P, P] so checkpoints load unchanged."""

    def __init__(self, cfg, dtype=ms.float32):
        super().__init__()
        self.embed_dim = cfg.hidden_size
        self.patch_dim = cfg.patch_dim
        shape = (cfg.hidden_size, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.weight = Parameter(initializer(Normal(cfg.init_method_std), shape, dtype), name="weight")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        w = ops.reshape(self.weight, (self.embed_dim, self.patch_dim))
        return self.matmul(ops.cast(x, w.dtype), w)


class PatchEmbed(nn.Cell):
    def __init__(self, cfg, dtype=ms.float32):
        super().__init__()
        self.proj = PatchProjection(cfg, dtype)

    def construct(self, x):
        return self.proj(x)


class VisionSelfAttention(nn.Cell):
    """qkv rows are grouped per head [q_h, k_h, v_h] (MindSpeed-MM layout)."""

    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.kv_channels
        inner = self.num_heads * self.head_dim
        self.linear_qkv = Linear(cfg.hidden_size, 3 * inner, True, cfg.init_method_std, dtype)
        self.linear_proj = Linear(inner, cfg.hidden_size, True, cfg.init_method_std, dtype)
        self.core_attention = CoreAttention(self.num_heads, self.num_heads, self.head_dim, backend)

    def construct(self, x, cos, sin, mask):
        n = x.shape[0]
        qkv = ops.reshape(self.linear_qkv(x), (n, self.num_heads, 3 * self.head_dim))
        d = self.head_dim
        q, k, v = qkv[:, :, :d], qkv[:, :, d:2 * d], qkv[:, :, 2 * d:]
        tile = self.core_attention.tile_broadcasts
        q = apply_rotary(q, cos, sin, tile)
        k = apply_rotary(k, cos, sin, tile)
        if self.core_attention.backend == "flash":
            # TND: [patches, heads, D] as is; `mask` carries the blocks' cumulative ends (cu_seqlens)
            return self.linear_proj(self.core_attention.varlen(q, k, v, mask))
        # [N, heads, D] -> [1, heads, N, D]
        q, k, v = (ops.expand_dims(ops.transpose(t, (1, 0, 2)), 0) for t in (q, k, v))
        out = self.core_attention(q, k, v, mask)
        return self.linear_proj(ops.reshape(out, (n, -1)))


class VisionMLP(nn.Cell):
    def __init__(self, cfg, dtype=ms.float32):
        super().__init__()
        self.linear_fc1 = Linear(cfg.hidden_size, cfg.ffn_hidden_size, True, cfg.init_method_std, dtype)
        self.activation = get_activation(cfg.activation_func)
        self.linear_fc2 = Linear(cfg.ffn_hidden_size, cfg.hidden_size, True, cfg.init_method_std, dtype)

    def construct(self, x):
        return self.linear_fc2(self.activation(self.linear_fc1(x)))


class VisionBlock(nn.Cell):
    """Pre-norm block: x + attn(LN1(x)); x + mlp(LN2(x)). A family changes the norm and the MLP
    through `norm_cls` / `make_mlp` (Qwen2.5-VL: RMSNorm, gated SiLU MLP)."""
    norm_cls = LayerNorm

    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.input_layernorm = self.norm_cls(cfg.hidden_size, cfg.layernorm_epsilon, dtype)
        self.self_attention = VisionSelfAttention(cfg, backend, dtype)
        self.pre_mlp_layernorm = self.norm_cls(cfg.hidden_size, cfg.layernorm_epsilon, dtype)
        self.mlp = self.make_mlp(cfg, dtype)

    @staticmethod
    def make_mlp(cfg, dtype):
        return VisionMLP(cfg, dtype)

    def construct(self, x, cos, sin, mask):
        x = x + self.self_attention(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class VisionBlocks(nn.Cell):
    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.layers = nn.CellList([VisionBlock(cfg, backend, dtype) for _ in range(cfg.num_layers)])

    def construct(self, x, cos, sin, mask):
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return x


def segment_mask(segment_ids):
    """Additive [1, 1, N, N] mask allowing attention only within equal segment ids (cu_seqlens)."""
    same = ops.expand_dims(segment_ids, 1) == ops.expand_dims(segment_ids, 0)
    mask = (1.0 - ops.cast(same, ms.float32)) * MASK_VALUE
    return ops.expand_dims(ops.expand_dims(mask, 0), 0)


class Qwen2VisionEncoder(nn.Cell):
    """pixel patches [N, C*T*P*P] -> patch features [N, E] (before the merger)."""
    blocks_cls = VisionBlocks

    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.patch_embed = PatchEmbed(cfg, dtype)
        self.rotary = VisionRotary(cfg.kv_channels)
        self.blocks = self.blocks_cls(cfg, backend, dtype)
        self.flash = backend == "flash"

    def construct(self, pixel_values, vision_pos_ids, vision_segment_ids, vision_cu_seqlens=None):
        """`vision_cu_seqlens` (flash backend only): the cumulative ends of the images / frames,
        `inputs.vision_cu_seqlens`; the matmul backend builds the block mask from the segment ids."""
        self.check_flash_inputs(vision_cu_seqlens)
        x = self.patch_embed(pixel_values)
        cos, sin = self.rotary_tables(vision_pos_ids)
        mask = vision_cu_seqlens if self.flash else segment_mask(vision_segment_ids)
        return self.blocks(x, cos, sin, mask)

    def check_flash_inputs(self, vision_cu_seqlens):
        if self.flash and vision_cu_seqlens is None:
            raise ValueError("the flash attention backend needs vision_cu_seqlens (the collator's "
                             "vision_segments option builds it)")

    def rotary_tables(self, vision_pos_ids):
        """cos/sin [N, 1, head_dim] of the patches' (h, w) positions, broadcast over the heads."""
        cos, sin = self.rotary(vision_pos_ids)
        return ops.expand_dims(cos, 1), ops.expand_dims(sin, 1)
