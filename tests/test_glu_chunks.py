"""TextMLP `glu_chunks`: with tensor parallel tp the fused fc1 is held in mm-convert's per-rank order
(rank r: concat(gate[r], up[r])) and the MLP splits gate/up inside each chunk. Simulated tp=2/4 on one
MLP against the plain layout, against per-rank local compute + sum, and against torch's SwiGLU."""
import numpy as np
import pytest
import torch
from mindspore import Tensor

from helpers.numerics import assert_close_scaled

from mindspeed_ms.checkpoint.tp_split import split_tp
from mindspeed_ms.config.model_config import TextDecoderConfig
from mindspeed_ms.models.qwen2vl.language import TextMLP
from mindspeed_ms.parallel.rank_params import to_plan_layout

FC1 = "text_decoder.decoder.layers.0.mlp.linear_fc1.weight"
FC2 = "text_decoder.decoder.layers.0.mlp.linear_fc2.weight"


def text_cfg(hidden=16, ffn=24):
    cfg = TextDecoderConfig(hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=2, num_layers=1,
                            vocab_size=32, mrope_section=[1, 1, 2])
    cfg._finalize("<test>", "text_decoder")
    return cfg


def mlp_with(cfg, fc1, fc2, glu_chunks):
    m = TextMLP(cfg)
    m.linear_fc1.weight.set_data(Tensor(fc1))
    m.linear_fc2.weight.set_data(Tensor(fc2))
    m.glu_chunks = glu_chunks
    return m


@pytest.mark.parametrize("tp", [2, 4])
def test_glu_chunks_with_mm_convert_rank_order_equals_plain_layout(tp):
    cfg = text_cfg()
    rng = np.random.default_rng(tp)
    fc1 = rng.standard_normal((2 * cfg.ffn_hidden_size, cfg.hidden_size)).astype(np.float32)
    fc2 = rng.standard_normal((cfg.hidden_size, cfg.ffn_hidden_size)).astype(np.float32)
    x = rng.standard_normal((2, 5, cfg.hidden_size)).astype(np.float32)

    # in-memory tp order == the concatenation of mm-convert's rank files
    plan_fc1 = to_plan_layout(FC1, fc1, tp)
    np.testing.assert_array_equal(plan_fc1, np.concatenate([split_tp(FC1, fc1, tp, r) for r in range(tp)]))

    plain = mlp_with(cfg, fc1, fc2, 1)(Tensor(x)).asnumpy()
    chunked = mlp_with(cfg, plan_fc1, fc2, tp)(Tensor(x)).asnumpy()
    assert_close_scaled(chunked, plain, 1e-6)

    # what each tp rank computes locally from its mm-convert files (column fc1, row fc2), summed
    local_cfg = text_cfg(ffn=cfg.ffn_hidden_size // tp)
    summed = sum(mlp_with(local_cfg, split_tp(FC1, fc1, tp, r), split_tp(FC2, fc2, tp, r), 1)(Tensor(x)).asnumpy()
                 for r in range(tp))
    # relative to the outputs' scale (~60): the rank sums add in another order, and an element near
    # zero after cancellation was 3e-4 off relative to itself on a Zen 4; a wrong split is O(1)
    assert_close_scaled(summed, plain, 1e-5)

    # torch reference of Qwen2MLP: down(silu(gate(x)) * up(x))
    g, u = torch.from_numpy(fc1).chunk(2, 0)
    xt = torch.from_numpy(x)
    ref = (torch.nn.functional.silu(xt @ g.T) * (xt @ u.T)) @ torch.from_numpy(fc2).T
    assert_close_scaled(plain, ref.numpy(), 1e-5)


def test_glu_chunks_with_plain_weights_is_not_the_plain_mlp():
    # the switch matters: plain [gate; up] weights read as 2 chunks give a different function
    cfg = text_cfg()
    rng = np.random.default_rng(0)
    fc1 = rng.standard_normal((2 * cfg.ffn_hidden_size, cfg.hidden_size)).astype(np.float32)
    fc2 = rng.standard_normal((cfg.hidden_size, cfg.ffn_hidden_size)).astype(np.float32)
    x = Tensor(rng.standard_normal((3, cfg.hidden_size)).astype(np.float32))
    assert not np.allclose(mlp_with(cfg, fc1, fc2, 2)(x).asnumpy(), mlp_with(cfg, fc1, fc2, 1)(x).asnumpy(), atol=1e-3)
