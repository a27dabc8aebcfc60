"""Qwen2-VL MindSpore model vs transformers 4.57.1 on random tiny checkpoints (fp32, CPU):
logits, loss, gradients, GRAPH vs PYNATIVE, MM parameter names, clear input errors."""
import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Tensor

from helpers.hf_tiny import load_hf_reference, make_tiny_hf_checkpoint
from helpers.parity import (PATCH_DIM, build_inputs, eager_and_graph, fuse_llm_qkv, fuse_vit_qkv, hf_forward, rel,
                            vision_block)
from mindspeed_ms.config.param_shapes import mm_param_shapes
from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS


@pytest.fixture(scope="module", params=["tied", "untied"])
def pair(request, tmp_path_factory):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    # the untied checkpoint is sharded, so both single-file and index.json loading are exercised
    shard = "400KB" if request.param == "untied" else None
    d = make_tiny_hf_checkpoint(tmp_path_factory.mktemp(request.param), request.param, max_shard_size=shard)
    return request.param, load_hf_reference(d), Qwen2VLForConditionalGeneration.from_pretrained(d)


def _block(cfg, kind, grid):
    return vision_block(cfg, kind, grid)


def _case(cfg, name, rng):
    """HF-style inputs of a named case (helpers/parity.build_inputs describes the parts)."""
    cases = {
        "one_image": ([[5, ("i", (1, 4, 6)), 9]], "right"),
        "two_images": ([[3, ("i", (1, 4, 4)), 4, ("i", (1, 6, 2)), 6]], "right"),
        "video_4_frames": ([[4, ("v", (2, 4, 4)), 7]], "right"),
        "text_only": ([[17]], "right"),
        "batch_left_pad": ([[3, ("i", (1, 4, 4)), 2, ("i", (1, 2, 2)), 5], [6, ("i", (1, 2, 4)), 3]], "left"),
        "batch_right_pad": ([[2, ("i", (1, 2, 2)), 4], [3, ("i", (1, 4, 2)), 2, ("i", (1, 2, 6)), 8]], "right"),
        "batch_mixed_video": ([[("v", (2, 2, 2)), 3, ("i", (1, 4, 4)), 2, ("i", (1, 2, 2)), 5],
                               [6, ("i", (1, 2, 4)), 3, ("v", (2, 2, 4)), 1]], "left"),
    }
    samples, side = cases[name]
    return build_inputs(cfg, samples, side, rng)


_hf = hf_forward


CASES = ["one_image", "two_images", "video_4_frames", "text_only", "batch_left_pad", "batch_right_pad",
         "batch_mixed_video"]


@pytest.mark.parametrize("case", CASES)
def test_logits_and_loss_match_hf(pair, case):
    preset, hf, model = pair
    inputs = _case(hf.config, case, np.random.default_rng(CASES.index(case)))
    ref = _hf(hf, inputs)
    out = model(**inputs)
    valid = inputs["attention_mask"] == 1  # HF's logits at padding positions are not meaningful
    ours, theirs = out.logits.asnumpy()[valid], ref.logits.numpy()[valid]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4, (preset, case, np.abs(ours - theirs).max())
    assert abs(float(out.loss.asnumpy()) - float(ref.loss)) <= 1e-5
    if "image_grid_thw" in inputs or "video_grid_thw" in inputs:
        np.testing.assert_array_equal(out.rope_deltas, ref.rope_deltas.numpy())


_fuse_llm_qkv, _fuse_vit_qkv, _rel = fuse_llm_qkv, fuse_vit_qkv, rel


def test_gradients_match_torch_autograd(pair):
    preset, hf, model = pair
    inputs = _case(hf.config, "batch_mixed_video", np.random.default_rng(7))
    hf.zero_grad()
    ref = _hf(hf, inputs, grad=True)
    ref.loss.backward()
    g = {k: p.grad.numpy() for k, p in hf.named_parameters() if p.grad is not None}

    batch, _ = model.prepare_batch(**inputs)
    args = [Tensor(batch[k]) for k in CONTRACT_KEYS[:9]]
    params = model.parameters_dict()
    names = ["image_encoder.encoder.patch_embed.proj.weight",
             "image_encoder.encoder.blocks.layers.0.self_attention.linear_qkv.weight",
             "image_encoder.encoder.blocks.layers.1.self_attention.linear_qkv.bias",
             "text_decoder.decoder.layers.0.self_attention.linear_qkv.weight",
             "text_decoder.decoder.layers.1.self_attention.linear_qkv.bias",
             "text_decoder.decoder.layers.0.mlp.linear_fc1.weight",
             "text_decoder.embedding.word_embeddings.weight"]
    if preset == "untied":
        names.append("text_decoder.output_layer.weight")
    weights = [params[n] for n in names]
    loss, grads = ms.value_and_grad(lambda *a: model(*a)[0], None, weights)(*args)
    ours = dict(zip(names, (x.asnumpy() for x in grads)))
    assert abs(float(loss.asnumpy()) - float(ref.loss.detach())) <= 1e-5

    tc, vc = hf.config.text_config, hf.config.vision_config
    lm = "model.language_model.layers"
    expect = {
        names[0]: g["model.visual.patch_embed.proj.weight"],
        names[1]: _fuse_vit_qkv(g["model.visual.blocks.0.attn.qkv.weight"], vc.num_heads),
        names[2]: _fuse_vit_qkv(g["model.visual.blocks.1.attn.qkv.bias"], vc.num_heads),
        names[3]: _fuse_llm_qkv(*(g[f"{lm}.0.self_attn.{x}_proj.weight"] for x in "qkv"), tc.num_key_value_heads),
        names[4]: _fuse_llm_qkv(*(g[f"{lm}.1.self_attn.{x}_proj.bias"] for x in "qkv"), tc.num_key_value_heads),
        names[5]: np.concatenate([g[f"{lm}.0.mlp.gate_proj.weight"], g[f"{lm}.0.mlp.up_proj.weight"]]),
        # tied: one weight used twice, its gradient is the sum of both uses on both sides
        names[6]: g["model.language_model.embed_tokens.weight"],
    }
    if preset == "untied":
        expect[names[7]] = g["lm_head.weight"]
    for n in names:
        assert ours[n].shape == expect[n].shape, n
        assert _rel(ours[n], expect[n]) <= 1e-4, (n, _rel(ours[n], expect[n]))


def test_graph_mode_equals_pynative(pair):
    """One GRAPH compile per preset (compiles cost ~10 s here): the loss branch for the tied model,
    the logits-only branch for the untied one."""
    preset, hf, model = pair
    inputs = _case(hf.config, "batch_mixed_video", np.random.default_rng(3))
    batch, _ = model.prepare_batch(**inputs)
    args = [Tensor(batch[k]) for k in CONTRACT_KEYS[:9 if preset == "tied" else 8]]
    eager, graph = eager_and_graph(model, args)
    if preset == "tied":
        assert abs(float(graph[0].asnumpy()) - float(eager[0].asnumpy())) <= 1e-6
        graph, eager = graph[1], eager[1]
    assert np.abs(graph.asnumpy() - eager.asnumpy()).max() <= 1e-5


def test_parameter_names_are_mindspeed_mm(pair):
    _, _, model = pair
    shapes = {k: tuple(p.shape) for k, p in model.parameters_dict().items()}
    assert shapes == dict(mm_param_shapes(model.config))
    for name in ("image_encoder.encoder.blocks.layers.0.self_attention.linear_qkv.weight",
                 "image_encoder.projector.encoder.linear_fc1.weight", "image_encoder.projector.layernorm.weight",
                 "text_decoder.embedding.word_embeddings.weight", "text_decoder.decoder.layers.0.mlp.linear_fc1.weight",
                 "text_decoder.decoder.final_layernorm.weight"):
        assert name in shapes
    assert ("text_decoder.output_layer.weight" in shapes) == (not model.config.text.tied)


def test_loss_weights_weight_shifted_tokens(pair):
    _, hf, model = pair
    inputs = _case(hf.config, "batch_right_pad", np.random.default_rng(5))
    out = model(**inputs)
    labels = inputs["labels"]
    shifted_valid = np.concatenate([labels[:, 1:], np.full((labels.shape[0], 1), -100)], 1) != -100
    # per-token weights 1/N reproduce the token mean; doubling one sample's weights changes the loss
    w = shifted_valid / shifted_valid.sum()
    same = model(**inputs, loss_weights=w.astype(np.float32))
    assert abs(float(same.loss.asnumpy()) - float(out.loss.asnumpy())) <= 1e-6
    logp = torch.log_softmax(torch.tensor(out.logits.asnumpy()), -1).numpy()
    safe = np.where(shifted_valid, np.concatenate([labels[:, 1:], np.zeros((labels.shape[0], 1), np.int64)], 1), 0)
    nll = -np.take_along_axis(logp, safe[..., None], -1)[..., 0] * shifted_valid
    w2 = w.copy(); w2[1] *= 2
    weighted = model(**inputs, loss_weights=w2.astype(np.float32))
    assert abs(float(weighted.loss.asnumpy()) - float((nll * w2).sum())) <= 1e-5


def test_clear_input_errors(pair):
    _, hf, model = pair
    cfg = hf.config
    ids = np.array([[1, 2] + _block(cfg, "i", (1, 4, 4)) + [3]])
    pix = np.zeros((16, PATCH_DIM), np.float32)
    with pytest.raises(ValueError, match=r"4 <\|image_pad\|> tokens in input_ids but image_grid_thw gives 6 features"):
        model(input_ids=ids, pixel_values=np.zeros((24, PATCH_DIM), np.float32), image_grid_thw=np.array([[1, 4, 6]]))
    with pytest.raises(ValueError, match=r"pixel_values has 20 patches but image_grid_thw \[\[1, 4, 4\]\] describes"):
        model(input_ids=ids, pixel_values=np.zeros((20, PATCH_DIM), np.float32), image_grid_thw=np.array([[1, 4, 4]]))
    with pytest.raises(ValueError, match=r"pixel_values_videos has 16 patches but video_grid_thw \[\[2, 4, 4\]\]"):
        model(input_ids=ids, pixel_values=pix, image_grid_thw=np.array([[1, 4, 4]]),
              pixel_values_videos=pix, video_grid_thw=np.array([[2, 4, 4]]))
    with pytest.raises(ValueError, match="pixel_values and image_grid_thw must be given together"):
        model(input_ids=ids, pixel_values=pix)
