"""Simulated tensor parallelism: split one LLM layer's and one ViT layer's weights as the shard plan
says, compute every rank's local part in numpy, combine with the collective the plan implies (sum
for row-parallel outputs, concatenation for column-parallel ones) and match the unsharded HF
transformers layer (float64) to 1e-5. This checks the fused qkv / gate-up layouts and the head
splits against the math."""
import copy
import json
import os

import numpy as np
import pytest
import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLVisionBlock

from mindspeed_ms.checkpoint.names import Dims, fuse_glu, fuse_llm_qkv, fuse_vit_qkv
from mindspeed_ms.config.model_config import model_config_from_dict
from mindspeed_ms.parallel.config import validate_parallel_config
from mindspeed_ms.parallel.rank_params import slice_for_rank, to_plan_layout
from mindspeed_ms.parallel.shard_plan import build_shard_plan
from helpers.numerics import assert_close_scaled

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")
L = "text_decoder.decoder.layers.0."
V = "image_encoder.encoder.blocks.layers.0."


def tiny_cfg(tp):
    with open(os.path.join(EX, "model_tiny.json")) as f:
        d = json.load(f)
    d = copy.deepcopy(d)
    if d["text_decoder"]["num_query_groups"] % tp:
        # the tiny model has 2 kv groups; tp 4 needs 4 (mm-convert splits whole kv groups)
        d["text_decoder"]["num_attention_heads"] = 8
        d["text_decoder"]["num_query_groups"] = 4
        d["text_decoder"]["kv_channels"] = 8
        d["text_decoder"]["mrope_section"] = [2, 1, 1]
    return model_config_from_dict(d)


def plan_for(cfg, tp):
    pcfg = validate_parallel_config({"tensor_model_parallel_size": tp, "seq_length": 16}, cfg, tp)
    return build_shard_plan(cfg, pcfg)


def rank_slices(plan, mm, tp):
    """Per-rank arrays of each MM parameter, cut by the plan's weight strategies."""
    strat = plan.param_strategies()
    out = []
    for r in range(tp):
        out.append({n: slice_for_rank(to_plan_layout(n, a, tp), strat[n][1], r) if n in strat else a
                    for n, a in mm.items()})
    return out


def rope_cos_sin(seq, dim, base=10000.0):
    inv = 1.0 / base ** (np.arange(0, dim, 2) / dim)
    f = np.outer(np.arange(seq) * 0.7 + 1.0, inv)
    emb = np.concatenate([f, f], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


@pytest.mark.parametrize("tp", [2, 4])
def test_llm_layer_sharded_equals_unsharded(tp):
    cfg = tiny_cfg(tp)
    t = cfg.text
    hf_cfg = Qwen2VLTextConfig(hidden_size=t.hidden_size, intermediate_size=t.ffn_hidden_size,
                               num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_query_groups,
                               num_hidden_layers=1, rms_norm_eps=t.layernorm_epsilon, vocab_size=64,
                               rope_scaling={"type": "mrope", "mrope_section": t.mrope_section})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(tp)
    layer = Qwen2VLDecoderLayer(hf_cfg, 0).double().eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    sd = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    dims = Dims(llm_layers=1, hidden=t.hidden_size, heads=t.num_attention_heads, kv_heads=t.num_query_groups,
                head_dim=t.kv_channels, ffn=t.ffn_hidden_size, vocab=64, tie=False, vit_layers=1, vit_dim=16, vit_heads=4)
    mm = {L + "input_layernorm.weight": sd["input_layernorm.weight"],
          L + "self_attention.linear_qkv.weight": fuse_llm_qkv(sd["self_attn.q_proj.weight"], sd["self_attn.k_proj.weight"],
                                                               sd["self_attn.v_proj.weight"], dims),
          L + "self_attention.linear_qkv.bias": fuse_llm_qkv(sd["self_attn.q_proj.bias"], sd["self_attn.k_proj.bias"],
                                                             sd["self_attn.v_proj.bias"], dims),
          L + "self_attention.linear_proj.weight": sd["self_attn.o_proj.weight"],
          L + "pre_mlp_layernorm.weight": sd["post_attention_layernorm.weight"],
          L + "mlp.linear_fc1.weight": fuse_glu(sd["mlp.gate_proj.weight"], sd["mlp.up_proj.weight"], dims),
          L + "mlp.linear_fc2.weight": sd["mlp.down_proj.weight"]}

    seq, hd = 10, t.kv_channels
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, seq, t.hidden_size))
    cos, sin = rope_cos_sin(seq, hd)
    causal = np.triu(np.full((seq, seq), -np.inf), 1)
    with torch.no_grad():
        cos3 = torch.from_numpy(np.broadcast_to(cos, (3, 1, seq, hd)).copy())
        sin3 = torch.from_numpy(np.broadcast_to(sin, (3, 1, seq, hd)).copy())
        ref = layer(torch.from_numpy(x), attention_mask=torch.from_numpy(causal)[None, None],
                    position_embeddings=(cos3, sin3))[0].numpy()[0]

    plan = plan_for(cfg, tp)
    strat = plan.param_strategies()
    # what the plan says: qkv / fc1 column-parallel, proj / fc2 row-parallel, norms replicated
    assert strat[L + "self_attention.linear_qkv.weight"][1] == (tp, 1)
    assert strat[L + "self_attention.linear_proj.weight"][1] == (1, tp)
    assert strat[L + "mlp.linear_fc2.weight"][1] == (1, tp)
    assert strat[L + "input_layernorm.weight"][1] == (1,)
    mlp_attrs = [c.attrs for c in plan.cells if c.cell == L + "mlp"]
    assert mlp_attrs == [{"glu_chunks": tp}]

    eps = t.layernorm_epsilon
    x0 = x[0]
    groups_local = t.num_query_groups // tp
    qpg = t.num_attention_heads // t.num_query_groups
    h1 = rms_norm(x0, mm[L + "input_layernorm.weight"], eps)
    attn_partials, qkv_locals = [], []
    ranks = rank_slices(plan, mm, tp)
    for w in ranks:
        qkv = h1 @ w[L + "self_attention.linear_qkv.weight"].T + w[L + "self_attention.linear_qkv.bias"]
        qkv_locals.append(qkv)
        g = qkv.reshape(seq, groups_local, (qpg + 2) * hd)
        q = g[:, :, :qpg * hd].reshape(seq, groups_local * qpg, hd).transpose(1, 0, 2)
        k = g[:, :, qpg * hd:(qpg + 1) * hd].transpose(1, 0, 2)
        v = g[:, :, (qpg + 1) * hd:].transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, qpg, axis=0)
        v = np.repeat(v, qpg, axis=0)
        p = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(hd) + causal)
        o = (p @ v).transpose(1, 0, 2).reshape(seq, -1)
        attn_partials.append(o @ w[L + "self_attention.linear_proj.weight"].T)
    # column-parallel outputs concatenate to the unsharded qkv projection
    full_qkv = h1 @ mm[L + "self_attention.linear_qkv.weight"].T + mm[L + "self_attention.linear_qkv.bias"]
    np.testing.assert_allclose(np.concatenate(qkv_locals, axis=1), full_qkv, atol=1e-12)
    h = x0 + sum(attn_partials)                     # row-parallel: all-reduce (sum)
    h2 = rms_norm(h, mm[L + "pre_mlp_layernorm.weight"], eps)
    mlp_partials = []
    for w in ranks:
        a = h2 @ w[L + "mlp.linear_fc1.weight"].T
        gate, up = np.split(a, 2, axis=1)           # glu_chunks: gate/up within the rank's own chunk
        act = gate / (1 + np.exp(-gate)) * up
        mlp_partials.append(act @ w[L + "mlp.linear_fc2.weight"].T)
    out = h + sum(mlp_partials)
    assert_close_scaled(out, ref, 1e-5)
    # and a naive contiguous split of [gate; up] (without the plan's per-rank order) is wrong
    naive = np.split(mm[L + "mlp.linear_fc1.weight"], tp, axis=0)[0]
    assert not np.allclose(naive, ranks[0][L + "mlp.linear_fc1.weight"])


@pytest.mark.parametrize("tp", [2, 4])
def test_vit_layer_sharded_equals_unsharded(tp):
    cfg = tiny_cfg(tp)
    v = cfg.vision
    vcfg = Qwen2VLVisionConfig(depth=1, embed_dim=v.hidden_size, num_heads=v.num_attention_heads,
                               mlp_ratio=v.ffn_hidden_size / v.hidden_size, hidden_act="quick_gelu")
    vcfg._attn_implementation = "eager"
    torch.manual_seed(10 + tp)
    block = Qwen2VLVisionBlock(vcfg).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    sd = {k: val.detach().numpy() for k, val in block.state_dict().items()}
    dims = Dims(llm_layers=1, hidden=8, heads=2, kv_heads=2, head_dim=4, ffn=8, vocab=8, tie=False, vit_layers=1,
                vit_dim=v.hidden_size, vit_heads=v.num_attention_heads)
    mm = {V + "input_layernorm.weight": sd["norm1.weight"], V + "input_layernorm.bias": sd["norm1.bias"],
          V + "self_attention.linear_qkv.weight": fuse_vit_qkv(sd["attn.qkv.weight"], dims),
          V + "self_attention.linear_qkv.bias": fuse_vit_qkv(sd["attn.qkv.bias"], dims),
          V + "self_attention.linear_proj.weight": sd["attn.proj.weight"],
          V + "self_attention.linear_proj.bias": sd["attn.proj.bias"],
          V + "pre_mlp_layernorm.weight": sd["norm2.weight"], V + "pre_mlp_layernorm.bias": sd["norm2.bias"],
          V + "mlp.linear_fc1.weight": sd["mlp.fc1.weight"], V + "mlp.linear_fc1.bias": sd["mlp.fc1.bias"],
          V + "mlp.linear_fc2.weight": sd["mlp.fc2.weight"], V + "mlp.linear_fc2.bias": sd["mlp.fc2.bias"]}
    n, hd, heads = 12, v.kv_channels, v.num_attention_heads
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, v.hidden_size))
    cos, sin = rope_cos_sin(n, hd)
    cu = np.array([0, 4, 12])                        # two images: attention stays inside each
    with torch.no_grad():
        ref = block(torch.from_numpy(x), cu_seqlens=torch.from_numpy(cu),
                    position_embeddings=(torch.from_numpy(cos), torch.from_numpy(sin))).numpy()
    seg = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
    mask = np.where(seg[:, None] == seg[None, :], 0.0, -np.inf)

    plan = plan_for(cfg, tp)
    strat = plan.param_strategies()
    assert strat[V + "self_attention.linear_qkv.weight"][1] == (tp, 1)
    assert strat[V + "mlp.linear_fc1.bias"][1] == (tp,)
    assert strat[V + "self_attention.linear_proj.bias"][1] == (1,)
    eps = v.layernorm_epsilon
    h1 = layer_norm(x, mm[V + "input_layernorm.weight"], mm[V + "input_layernorm.bias"], eps)
    ranks = rank_slices(plan, mm, tp)
    partial = []
    for w in ranks:
        qkv = (h1 @ w[V + "self_attention.linear_qkv.weight"].T + w[V + "self_attention.linear_qkv.bias"])
        qkv = qkv.reshape(n, heads // tp, 3, hd)
        q, k, val = (qkv[:, :, i].transpose(1, 0, 2) for i in range(3))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        p = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask)
        o = (p @ val).transpose(1, 0, 2).reshape(n, -1)
        partial.append(o @ w[V + "self_attention.linear_proj.weight"].T)
    # row-parallel: sum of partials, then the replicated bias once
    h = x + sum(partial) + mm[V + "self_attention.linear_proj.bias"]
    h2 = layer_norm(h, mm[V + "pre_mlp_layernorm.weight"], mm[V + "pre_mlp_layernorm.bias"], eps)
    partial = []
    for w in ranks:
        a = h2 @ w[V + "mlp.linear_fc1.weight"].T + w[V + "mlp.linear_fc1.bias"]
        a = a / (1 + np.exp(-1.702 * a))             # quick_gelu
        partial.append(a @ w[V + "mlp.linear_fc2.weight"].T)
    out = h + sum(partial) + mm[V + "mlp.linear_fc2.bias"]
    assert_close_scaled(out, ref, 1e-5)
