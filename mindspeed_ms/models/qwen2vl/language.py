"""qwen2lm: the Qwen2 text decoder with M-RoPE (HF `Qwen2VLTextModel` + lm_head), with
MindSpeed-MM parameter names and fused layouts:
- `self_attention.linear_qkv` rows interleaved per kv group: [q_g0, k_g0, v_g0, q_g1, ...];
- `mlp.linear_fc1` = concat(gate, up).

KV cache (generation, PYNATIVE): `TextDecoder.construct(..., past_key_values=None, use_cache=True)`
returns `(logits, new_past)` where `new_past` is a tuple with one `(k, v)` per layer, each
[B, kv_heads, S_total, head_dim] after M-RoPE. For a decode step pass the new token(s) embeddings,
`attention_mask` over all S_total positions, `position_ids` [3, B, S_new] continuing the prompt's
positions (`cache_len + arange(S_new) + rope_deltas` on all three rows, rope_deltas from
`rope.get_rope_index`), and the previous `past_key_values`.
"""
import mindspore as ms
from mindspore import nn, ops

from mindspeed_ms.models.layers import MASK_VALUE, CoreAttention, Embedding, Linear, RMSNorm
from mindspeed_ms.models.layers.gated_mlp import GatedMLP
from mindspeed_ms.models.qwen2vl.rotary import MultimodalRotary, apply_rotary


class TextSelfAttention(nn.Cell):
    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv = cfg.num_query_groups
        self.rep = self.num_heads // self.num_kv
        self.head_dim = cfg.kv_channels
        qkv_out = (self.num_heads + 2 * self.num_kv) * self.head_dim
        self.linear_qkv = Linear(cfg.hidden_size, qkv_out, cfg.add_qkv_bias, cfg.init_method_std, dtype)
        self.linear_proj = Linear(self.num_heads * self.head_dim, cfg.hidden_size, False, cfg.init_method_std, dtype)
        self.core_attention = CoreAttention(self.num_heads, self.num_kv, self.head_dim, backend, causal=True)

    def construct(self, x, cos, sin, mask, past_k=None, past_v=None):
        b, s, _ = x.shape
        d, rep = self.head_dim, self.rep
        qkv = ops.reshape(self.linear_qkv(x), (b, s, self.num_kv, (rep + 2) * d))
        q = ops.reshape(qkv[..., :rep * d], (b, s, self.num_heads, d))
        k = qkv[..., rep * d:(rep + 1) * d]
        v = qkv[..., (rep + 1) * d:]
        q, k, v = (ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
        tile = self.core_attention.tile_broadcasts
        q = apply_rotary(q, cos, sin, tile)
        k = apply_rotary(k, cos, sin, tile)
        if past_k is not None:
            k = ops.concat((past_k, k), 2)
            v = ops.concat((past_v, v), 2)
        out = self.core_attention(q, k, v, mask)
        return self.linear_proj(out), k, v


class TextMLP(GatedMLP):
    """The LLM's SwiGLU (layers/gated_mlp.py) without biases."""

    def __init__(self, cfg, dtype=ms.float32):
        super().__init__(cfg.hidden_size, cfg.ffn_hidden_size, False, cfg.init_method_std, dtype)


class TextDecoderLayer(nn.Cell):
    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon, dtype)
        self.self_attention = TextSelfAttention(cfg, backend, dtype)
        self.pre_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon, dtype)
        self.mlp = TextMLP(cfg, dtype)

    def construct(self, x, cos, sin, mask, past_k=None, past_v=None):
        attn, k, v = self.self_attention(self.input_layernorm(x), cos, sin, mask, past_k, past_v)
        x = x + attn
        return x + self.mlp(self.pre_mlp_layernorm(x)), k, v


class TextEmbedding(nn.Cell):
    def __init__(self, cfg, dtype=ms.float32):
        super().__init__()
        self.word_embeddings = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.init_method_std, dtype)

    def construct(self, input_ids):
        return self.word_embeddings(input_ids)


class DecoderStack(nn.Cell):
    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.layers = nn.CellList([TextDecoderLayer(cfg, backend, dtype) for _ in range(cfg.num_layers)])
        self.final_layernorm = RMSNorm(cfg.hidden_size, cfg.layernorm_epsilon, dtype)

    def construct(self, x, cos, sin, mask, past_key_values=None):
        new_past = ()
        for i, layer in enumerate(self.layers):
            if past_key_values is None:
                x, k, v = layer(x, cos, sin, mask)
            else:
                x, k, v = layer(x, cos, sin, mask, past_key_values[i][0], past_key_values[i][1])
            new_past = new_past + ((k, v),)
        return self.final_layernorm(x), new_past


def causal_padding_mask(attention_mask, q_len):
    """Additive [B, 1, Sq, Sk] mask: query i (the last Sq of Sk positions) sees key j <= its own
    position, and only keys where attention_mask == 1."""
    sk = attention_mask.shape[1]
    q_idx = ops.arange(q_len).reshape(q_len, 1) + (sk - q_len)
    k_idx = ops.arange(sk).reshape(1, sk)
    causal = ops.cast(k_idx <= q_idx, ms.float32)
    keep = ops.expand_dims(causal, 0) * ops.expand_dims(ops.cast(attention_mask, ms.float32), 1)
    return ops.expand_dims((1.0 - keep) * MASK_VALUE, 1)


def segment_causal_mask(attention_mask):
    """Additive [B, 1, S, S] mask for a full sequence whose `attention_mask` may number packed
    samples (neat packing: 1..k per sample, 0 padding; `data.packing`): query i sees key j <= i of
    its own sample. With a 0/1 mask this is `causal_padding_mask` (a padding query, number 0,
    sees every real key before it, as there). Every operand is tiled to [B, S, S] first: no
    broadcasting kernels (layers/tiling.py)."""
    b, s = attention_mask.shape
    seg = ops.cast(attention_mask, ms.float32)
    seg_q = ops.tile(ops.expand_dims(seg, 2), (1, 1, s))
    seg_k = ops.tile(ops.expand_dims(seg, 1), (1, s, 1))
    q_idx = ops.arange(s).reshape(s, 1)
    k_idx = ops.arange(s).reshape(1, s)
    causal = ops.tile(ops.expand_dims(ops.tile(q_idx, (1, s)) >= ops.tile(k_idx, (s, 1)), 0), (b, 1, 1))
    same = ops.logical_or(ops.equal(seg_q, seg_k), seg_q < 0.5)
    keep = ops.logical_and(ops.logical_and(same, seg_k > 0.5), causal)
    return ops.expand_dims((1.0 - ops.cast(keep, ms.float32)) * MASK_VALUE, 1)


class TextDecoder(nn.Cell):
    """`text_decoder`: embedding, decoder layers, final norm, output layer (tied or not)."""

    def __init__(self, cfg, backend="matmul", dtype=ms.float32):
        super().__init__()
        self.tied = cfg.tied
        self.embedding = TextEmbedding(cfg, dtype)
        self.rotary = MultimodalRotary(cfg.kv_channels, cfg.mrope_section, cfg.rope_theta)
        self.decoder = DecoderStack(cfg, backend, dtype)
        if not self.tied:
            self.output_layer = Linear(cfg.hidden_size, cfg.vocab_size, False, cfg.init_method_std, dtype)
        else:
            # logits = h @ word_embeddings^T; its own primitive so it can be vocab-sharded
            self.output_matmul = ops.MatMul(transpose_b=True)
        # a tied model whose output layer sits on another pipeline stage holds its own copy
        self.output_copy = False
        self.hidden_size = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self.init_method_std = cfg.init_method_std

    def add_output_layer_copy(self):
        """Tied embeddings with the output layer on another pipeline stage than the embedding (e.g.
        the 2B model with pp > 1): create `output_layer` holding a copy of the table, the tensor
        mm-convert writes to the last stage as `output_layer.weight`. Megatron keeps the two copies
        equal by summing their gradients (`parallel.tied_grads`). Call before building the optimizer.
        No-op for an untied model or when the copy exists."""
        if not self.tied or self.output_copy:
            return
        table = self.embedding.word_embeddings.weight
        if table.has_init:
            # a lazily built model (parallel.lazy_params): the copy stays unallocated too; each rank
            # fills its slice from the checkpoint (or the table's own init)
            from mindspore.nn.utils import no_init_parameters
            with no_init_parameters():
                layer = Linear(self.hidden_size, self.vocab_size, False, self.init_method_std, table.dtype)
        else:
            layer = Linear(self.hidden_size, self.vocab_size, False, self.init_method_std, table.dtype)
            # a host copy: Parameter.value() runs an Identity kernel, which CPU lacks for bf16 (dry runs)
            layer.weight.set_data(ms.Tensor(table.asnumpy()))
        layer.weight.requires_grad = table.requires_grad  # frozen with the table (LoRA's frozen base)
        self.output_layer = layer
        # a Cell attached after construction is named from here down only: give it the full path
        prefix = table.name[:-len("embedding.word_embeddings.weight")]
        layer.update_parameters_name(prefix + "output_layer.")
        self.output_copy = True

    def output_weight(self):
        """The [V, H] output weight for the fused chunked loss (models/layers/linear_cross_entropy.py):
        the embedding table when tied without a copy, else `output_layer.weight`; None when the output
        layer is not a plain Linear (e.g. wrapped by a LoRA adapter), which keeps the plain loss."""
        if self.tied and not self.output_copy:
            return self.embedding.word_embeddings.weight
        if isinstance(self.output_layer, Linear):
            return self.output_layer.weight
        return None

    def hidden_states(self, inputs_embeds, position_ids, attention_mask):
        """Final-norm hidden states [B, S, H] (construct without the output layer)."""
        cos, sin = self.rotary(position_ids)
        mask = segment_causal_mask(attention_mask)
        hidden, _ = self.decoder(inputs_embeds, cos, sin, mask)
        return hidden

    def logits(self, hidden):
        if self.tied and not self.output_copy:
            b, s, h = hidden.shape
            out = self.output_matmul(ops.reshape(hidden, (b * s, h)), self.embedding.word_embeddings.weight)
            return ops.reshape(out, (b, s, self.vocab_size))
        return self.output_layer(hidden)

    def construct(self, inputs_embeds, position_ids, attention_mask, past_key_values=None, use_cache=False):
        cos, sin = self.rotary(position_ids)
        if past_key_values is None:
            mask = segment_causal_mask(attention_mask)
        else:
            mask = causal_padding_mask(attention_mask, inputs_embeds.shape[1])
        hidden, new_past = self.decoder(inputs_embeds, cos, sin, mask, past_key_values)
        logits = self.logits(hidden)
        if use_cache:
            return logits, new_past
        return logits
