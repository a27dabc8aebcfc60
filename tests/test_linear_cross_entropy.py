"""The fused chunked output layer + cross entropy (models/layers/linear_cross_entropy.py) against
torch autograd, and the model's training loss (`train_loss`) against its plain `construct` loss
(which tests/test_model_parity.py checks against HF transformers)."""
import os
import sys

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from mindspeed_ms.models.layers.linear_cross_entropy import LinearCrossEntropy
from helpers.numerics import assert_close_scaled

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class _Net(nn.Cell):
    def __init__(self, weight, chunks):
        super().__init__()
        self.weight = Parameter(Tensor(weight), name="weight")
        self.lce = LinearCrossEntropy(chunks)

    def construct(self, hidden, targets, token_weights):
        loss, _, _, _ = self.lce(hidden * 1.0, self.weight, targets, token_weights)
        return loss * 3.0          # a non-unit incoming gradient reaches bprop


@pytest.mark.parametrize("chunks", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_loss_and_gradients_match_torch(chunks, mode):
    ms.set_context(mode=mode)
    rng = np.random.default_rng(chunks)
    t, h, v = 32, 16, 97
    hidden = rng.standard_normal((t, h)).astype(np.float32)
    weight = (3 * rng.standard_normal((v, h))).astype(np.float32)     # large logits: stability matters
    targets = rng.integers(0, v, t).astype(np.int32)
    tw = rng.random(t).astype(np.float32)
    tw[::3] = 0.0
    targets[::6] = 0                                                   # ignored rows may hold any index
    net = _Net(weight, chunks)
    grad = ops.GradOperation(get_all=True, get_by_list=True)(net, ParameterTuple([net.weight]))
    loss = float(net(Tensor(hidden), Tensor(targets), Tensor(tw)).asnumpy())
    (g_hidden, _, g_tw), (g_weight,) = grad(Tensor(hidden), Tensor(targets), Tensor(tw))

    ht, wt, twt = (torch.tensor(a, requires_grad=True) for a in (hidden, weight, tw))
    ref = 3 * (torch.nn.functional.cross_entropy(ht @ wt.T, torch.tensor(targets).long(), reduction="none") * twt).sum()
    ref.backward()
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-5)
    assert_close_scaled(g_hidden.asnumpy(), ht.grad.numpy(), 1e-5)
    assert_close_scaled(g_weight.asnumpy(), wt.grad.numpy(), 1e-5)
    assert_close_scaled(g_tw.asnumpy(), twt.grad.numpy(), 1e-5)


def test_rejects_chunk_count_that_does_not_divide_the_padding():
    with pytest.raises(ValueError, match="num_chunks"):
        LinearCrossEntropy(3)


def _tiny_model_and_batch(tmp_path, tied):
    import train_synthetic as ts
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration
    from mindspeed_ms.training.loss_weights import make_loss_weights
    from mindspeed_ms.training.train_step import LossCell

    path = ts.small_model_json(str(tmp_path / "model.json"))
    cfg = load_model_json(path)
    cfg.text.untie_embeddings_and_output_weights = not tied
    ms.set_seed(0)
    model = LossCell(Qwen2VLForConditionalGeneration(cfg))
    batch = ts.collate(model, ts.make_samples(2, seed=3), [0, 1])
    batch["loss_weights"] = make_loss_weights(batch["labels"], "default", 1, 1)
    return model, batch


@pytest.mark.parametrize("tied,rows", [(True, False), (False, False), (True, True)])
def test_train_loss_equals_construct_loss_and_gradients(tmp_path, tied, rows):
    """The training step's loss (fused, chunked; `rows`: on the loss rows only, as the CPU trainer
    runs it) vs the logits path, value and every gradient."""
    from mindspeed_ms.training.loss_weights import loss_rows
    from mindspeed_ms.training.train_step import TRAIN_KEYS
    ms.set_context(mode=ms.GRAPH_MODE)
    model, batch = _tiny_model_and_batch(tmp_path, tied)
    net = model.network
    assert net.text_decoder.output_weight() is not None
    args = [Tensor(batch[k]) for k in TRAIN_KEYS]
    if rows:
        index = loss_rows(batch["loss_weights"], multiple=8)
        assert len(index) < batch["loss_weights"].size     # fewer rows than positions: a real selection
        args.append(Tensor(index))
    weights = ParameterTuple(net.trainable_params())

    class Plain(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                      vision_segment_ids, vision_gather_index, vision_token_mask, labels, loss_weights):
            loss, _ = self.net(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                               vision_segment_ids, vision_gather_index, vision_token_mask, labels, loss_weights)
            return loss

    fused_loss, fused_grads = ms.value_and_grad(model, None, weights)(*args)
    plain_loss, plain_grads = ms.value_and_grad(Plain(), None, weights)(*args[:len(TRAIN_KEYS)])
    np.testing.assert_allclose(float(fused_loss.asnumpy()), float(plain_loss.asnumpy()), rtol=1e-5)
    for p, a, b in zip(weights, fused_grads, plain_grads):
        assert_close_scaled(a.asnumpy(), b.asnumpy(), 1e-4, p.name)


def test_loss_rows_pick_weighted_positions_and_pad_with_the_last():
    from mindspeed_ms.training.loss_weights import loss_rows
    w = np.zeros((2, 6), np.float32)
    w[0, 2:4] = 0.25
    w[1, 0] = 0.5
    rows = loss_rows(w, multiple=8)
    assert rows.dtype == np.int32 and len(rows) == 8
    np.testing.assert_array_equal(rows[:3], [2, 3, 6])
    assert (rows[3:] == 11).all()                      # padding: the last position, weight 0
    assert len(loss_rows(np.zeros((1, 8), np.float32), multiple=8)) == 8     # no label: still a chunkable size
