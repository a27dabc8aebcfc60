"""Attention core: softmax(q k^T * scale + mask) v with grouped kv heads.

Two backends behind one interface, so the model math never changes:
- "matmul" (CPU / reference): BatchMatMul + fp32 Softmax with an additive mask. Query heads are
  grouped by their kv head (`[B, kv, rep*Sq, D]`), so GQA needs no repeat of k/v.
- "flash" (Ascend A2): `FlashAttentionScore`. Causal (the LLM): BNSD with sparse_mode 3
  (rightDownCausal, also right for a KV-cache decode where Sq < Sk) and the compressed 2048x2048
  causal mask, so no [S, S] mask is built; padding is not masked, which is exact for right-padded
  batches (the training collator's): a padded key only follows real queries. Non-causal: BNSD
  with the additive mask as a boolean "discard" mask, or `varlen` for the ViT: TND layout with the
  cumulative sequence ends of the images / frames (`actual_seq_qlen`, HF's cu_seqlens[1:]) instead
  of a block-diagonal [N, N] mask.
The primitives are attributes (`bmm_qk`, `bmm_pv`, `softmax`, `flash_attention`,
`flash_attention_tnd`) so the parallel package can shard them by heads.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindspeed_ms.models.layers.tiling import TiledSoftmax, tile_like

# Additive mask value: exp(x - max) underflows to exactly 0 in fp32, and unlike -inf a fully
# masked row (a padding query) stays finite instead of producing NaN.
MASK_VALUE = -1e9
BACKENDS = ("matmul", "flash")
# FlashAttentionScore's compressed mask for sparse_mode 2/3: 1 (discard) above the diagonal
FLASH_CAUSAL_MASK_SIZE = 2048


class CoreAttention(nn.Cell):
    def __init__(self, num_heads, num_kv_heads, head_dim, backend="matmul", causal=False):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"attention backend '{backend}' unknown; one of {BACKENDS}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.rep = num_heads // num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.backend = backend
        self.causal = causal
        self.bmm_qk = ops.BatchMatMul(transpose_b=True)
        self.bmm_pv = ops.BatchMatMul()
        self.softmax = ops.Softmax(axis=-1)
        self.mul_scale = ops.Mul()
        self.add_mask = ops.Add()
        self.cast = ops.Cast()
        self.reshape = ops.Reshape()
        self.transpose = ops.Transpose()
        # CPU: the mask tiled to the scores' shape and TiledSoftmax instead of broadcasts over
        # [S x S] (layers/tiling.py); the shard plan turns this off for the sharded primitives above
        self.tile_broadcasts = backend == "matmul"
        self.tiled_softmax = TiledSoftmax()
        if backend == "flash":
            from mindspore.ops.operations.nn_ops import FlashAttentionScore
            self.flash_attention = FlashAttentionScore(head_num=num_heads, scale_value=self.scale,
                                                       input_layout="BNSD", sparse_mode=3 if causal else 0)
            if causal:
                n = FLASH_CAUSAL_MASK_SIZE
                self.causal_mask = Tensor(np.triu(np.ones((n, n), np.uint8), 1))
            else:
                self.flash_attention_tnd = FlashAttentionScore(head_num=num_heads, scale_value=self.scale,
                                                               input_layout="TND", sparse_mode=0)

    def construct(self, q, k, v, mask):
        """q [B, Nq, Sq, D]; k, v [B, Nkv, Sk, D]; mask additive fp32 [B or 1, 1, Sq, Sk] (0 keep,
        MASK_VALUE drop). Returns [B, Sq, Nq*D]."""
        b, _, sq, d = q.shape
        sk = k.shape[2]
        if self.backend == "flash":
            dtype = q.dtype
            fdtype = ms.bfloat16 if dtype == ms.float32 else dtype
            discard = self.causal_mask if self.causal else self.cast(mask < 0, ms.uint8)
            _, _, _, out = self.flash_attention(self.cast(q, fdtype), self.cast(k, fdtype), self.cast(v, fdtype),
                                                None, None, None, discard, None)
            out = self.cast(out, dtype)
        else:
            # scale q ([.., S, D]) rather than the scores ([.., S, S]): one small pass, no [S x S] buffer
            qg = self.mul_scale(self.reshape(q, (b, self.num_kv_heads, self.rep * sq, d)), self.scale)
            scores = self.bmm_qk(qg, k)
            scores = self.reshape(self.cast(scores, ms.float32), (b, self.num_kv_heads, self.rep, sq, sk))
            mask = self.reshape(mask, (mask.shape[0], 1, 1, sq, sk))
            if self.tile_broadcasts:
                probs = self.tiled_softmax(scores + tile_like(mask, scores))
            else:
                probs = self.softmax(self.add_mask(scores, mask))
            probs = self.cast(probs, v.dtype)
            probs = self.reshape(probs, (b, self.num_kv_heads, self.rep * sq, sk))
            out = self.reshape(self.bmm_pv(probs, v), (b, self.num_heads, sq, d))
        out = self.transpose(out, (0, 2, 1, 3))
        return self.reshape(out, (b, sq, self.num_heads * d))

    def varlen(self, q, k, v, cu_seqlens):
        """Flash attention within variable-length blocks (the ViT's images / frames), TND layout.

        q, k, v [T, N, D] (all patches of the step, heads, head dim); `cu_seqlens` [K] int: the
        cumulative end of each block (HF's cu_seqlens without the leading 0, last value T; see
        `qwen2vl.inputs.vision_cu_seqlens`). Returns [T, N*D]. Ascend only (flash backend)."""
        t, n, d = q.shape
        dtype = q.dtype
        fdtype = ms.bfloat16 if dtype == ms.float32 else dtype
        ends = self.cast(cu_seqlens, ms.int64)
        _, _, _, out = self.flash_attention_tnd(self.cast(q, fdtype), self.cast(k, fdtype), self.cast(v, fdtype),
                                                None, None, None, None, None, ends, ends)
        return self.reshape(self.cast(out, dtype), (t, n * d))
