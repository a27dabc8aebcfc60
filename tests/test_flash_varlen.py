"""Flash attention on the Ascend path, checked statically on CPU (FlashAttentionScore has no CPU
kernel): the ViT's TND block ends equal HF's cu_seqlens; the primitives carry the layouts / sparse
modes / masks the docs promise; a flash-backend model whose two primitives are replaced by a CPU
stand-in of FlashAttentionScore's documented semantics (which also records the arguments) gives
the matmul backend's logits; the Ascend shard plan names the TND / causal primitives and passes."""
import copy
import json
import os

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor
from mindspore.ops.operations.nn_ops import FlashAttentionScore
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from mindspeed_ms.config.model_config import model_config_from_dict
from mindspeed_ms.models.layers import attention as attention_mod
from mindspeed_ms.models.qwen2vl.inputs import build_vision_inputs, vision_cu_seqlens, vision_segment_ids
from mindspeed_ms.models.qwen2vl.model import CONTRACT_KEYS, Qwen2VLForConditionalGeneration
from mindspeed_ms.parallel import shard_plan as shard_plan_mod
from mindspeed_ms.parallel.checker import assert_plan_ok
from mindspeed_ms.parallel.config import validate_parallel_config
from mindspeed_ms.parallel.shard_plan import apply_shard_plan, build_shard_plan

EX = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")
GRIDS = [([[1, 4, 6]], None), ([[1, 4, 4], [1, 6, 2]], None), (None, [[2, 4, 4]]),
         ([[1, 2, 2], [1, 4, 8]], [[3, 2, 4], [2, 2, 2]])]


def hf_cu_seqlens(grid):
    """cu_seqlens as HF's vision transformer hands it to its blocks (captured from a tiny model)."""
    cfg = Qwen2VLVisionConfig(depth=1, embed_dim=16, hidden_size=16, num_heads=2, mlp_ratio=2, patch_size=14,
                              spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    model = Qwen2VisionTransformerPretrainedModel(cfg).eval()
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.update(cu=kw["cu_seqlens"]), with_kwargs=True)
    g = torch.tensor(grid)
    with torch.no_grad():
        model(torch.zeros(int(g.prod(-1).sum()), 3 * 2 * 14 * 14), grid_thw=g)
    return seen["cu"].numpy()


@pytest.mark.parametrize("images, videos", GRIDS)
def test_block_ends_equal_hf_cu_seqlens(images, videos):
    grid = (images or []) + (videos or [])
    real = int(np.prod(grid, axis=1).sum())
    dummy = build_vision_inputs(np.zeros((1, 1)), None, None, num_patches=4)   # no image: one padding block
    assert vision_cu_seqlens(dummy["vision_segment_ids"]).tolist() == [4]
    segs = vision_segment_ids(images, videos, real)
    np.testing.assert_array_equal(vision_cu_seqlens(segs), hf_cu_seqlens(grid)[1:])
    # with padding patches and a fixed block count (the collator's Ascend option)
    padded = vision_segment_ids(images, videos, real + 8)
    k = len(hf_cu_seqlens(grid)) - 1
    ends = vision_cu_seqlens(padded, num_segments=k + 3, num_real_patches=real)
    np.testing.assert_array_equal(ends[:k], hf_cu_seqlens(grid)[1:])
    assert ends.tolist()[k:] == [real + 1, real + 2, real + 8] and ends.dtype == np.int32


def test_fixed_block_count_errors():
    segs = np.array([0] * 4 + [1] * 4 + [2] * 2)
    with pytest.raises(ValueError, match=r"3 vision attention blocks .* exceed num_segments=2"):
        vision_cu_seqlens(segs, num_segments=2)
    with pytest.raises(ValueError, match=r"only 2 padding patches follow the 8 real"):
        vision_cu_seqlens(segs, num_segments=5, num_real_patches=8)


def test_primitive_layouts():
    vit = attention_mod.CoreAttention(4, 4, 16, "flash")
    llm = attention_mod.CoreAttention(4, 2, 16, "flash", causal=True)
    ref_tnd = FlashAttentionScore(head_num=4, input_layout="TND")
    ref_bnsd = FlashAttentionScore(head_num=4, input_layout="BNSD")
    assert vit.flash_attention_tnd.input_layout == ref_tnd.input_layout
    assert vit.flash_attention_tnd.sparse_mode == 0 and vit.flash_attention_tnd.head_num == 4
    assert llm.flash_attention.input_layout == ref_bnsd.input_layout and llm.flash_attention.sparse_mode == 3
    assert abs(llm.flash_attention.scale_value - 16 ** -0.5) < 1e-7
    n = shard_plan_mod.FLASH_CAUSAL_MASK_SIZE
    assert n == attention_mod.FLASH_CAUSAL_MASK_SIZE == 2048
    np.testing.assert_array_equal(llm.causal_mask.asnumpy(), np.triu(np.ones((n, n), np.uint8), 1))


class FlashStandIn:
    """FlashAttentionScore's documented semantics on CPU (fp32 numpy), recording each call."""

    def __init__(self, prim, causal_mask=None):
        self.head_num, self.scale, self.sparse_mode = prim.head_num, prim.scale_value, prim.sparse_mode
        self.tnd = prim.input_layout == FlashAttentionScore(head_num=1, input_layout="TND").input_layout
        self.calls = []

    def __call__(self, q, k, v, real_shift, drop_mask, padding_mask, attn_mask, prefix,
                 actual_seq_qlen=None, actual_seq_kvlen=None):
        assert real_shift is None and drop_mask is None and padding_mask is None and prefix is None
        assert q.dtype == ms.bfloat16 and k.dtype == ms.bfloat16
        qn, kn, vn = (x.astype(ms.float32).asnumpy() for x in (q, k, v))
        self.calls.append(dict(q=qn.shape, k=kn.shape, qlen=None if actual_seq_qlen is None else actual_seq_qlen.asnumpy(),
                               kvlen=None if actual_seq_kvlen is None else actual_seq_kvlen.asnumpy(),
                               mask=None if attn_mask is None else attn_mask.shape))
        if self.tnd:      # [T, N, D], blocks [ends[i-1], ends[i]) attend within themselves
            assert attn_mask is None and q.shape[1] == self.head_num
            out = np.zeros_like(qn)
            ends = [0] + actual_seq_qlen.asnumpy().tolist()
            for a, b in zip(ends[:-1], ends[1:]):
                s = np.einsum("tnd,snd->nts", qn[a:b], kn[a:b]) * self.scale
                p = np.exp(s - s.max(-1, keepdims=True))
                out[a:b] = np.einsum("nts,snd->tnd", p / p.sum(-1, keepdims=True), vn[a:b])
        else:             # BNSD, sparse_mode 3: query i sees keys j <= i + (Sk - Sq)
            assert self.sparse_mode == 3 and attn_mask.shape == (2048, 2048)
            rep = qn.shape[1] // kn.shape[1]
            kn, vn = np.repeat(kn, rep, 1), np.repeat(vn, rep, 1)
            sq, sk = qn.shape[2], kn.shape[2]
            s = np.einsum("bnqd,bnkd->bnqk", qn, kn) * self.scale
            s = np.where(np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq), s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out = np.einsum("bnqk,bnkd->bnqd", p / p.sum(-1, keepdims=True), vn)
        return None, None, None, Tensor(out, ms.bfloat16)


def tiny():
    with open(os.path.join(EX, "model_tiny.json")) as f:
        return model_config_from_dict(copy.deepcopy(json.load(f)))


def test_flash_model_with_cpu_stand_in_equals_matmul_backend():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = tiny()
    ref = Qwen2VLForConditionalGeneration(cfg)
    flash = Qwen2VLForConditionalGeneration(cfg, attention_backend="flash")
    flash.load_mm_state_dict(ref.mm_state_dict())
    vit_fa, llm_fa = [], []
    for name, cell in flash.cells_and_names():
        if hasattr(cell, "flash_attention_tnd"):
            cell.flash_attention_tnd = FlashStandIn(cell.flash_attention_tnd)
            vit_fa.append(cell.flash_attention_tnd)
        elif hasattr(cell, "flash_attention"):
            cell.flash_attention = FlashStandIn(cell.flash_attention)
            llm_fa.append(cell.flash_attention)
    assert len(vit_fa) == cfg.vision.num_layers and len(llm_fa) == cfg.text.num_layers
    rng = np.random.default_rng(0)
    img, vid = [[1, 4, 6], [1, 2, 4]], [[2, 2, 4]]
    n_img, n_vid = 6 + 2, 4
    ids = np.concatenate([rng.integers(0, 900, 3), [cfg.vision_start_token_id], [cfg.image_token_id] * n_img,
                          [cfg.video_token_id] * n_vid, rng.integers(0, 900, 5)])[None]
    pixels = rng.standard_normal((24 + 8 + 16, cfg.vision.patch_dim)).astype(np.float32)
    batch, _ = ref.prepare_batch(ids, pixel_values=pixels[:32], image_grid_thw=np.array(img),
                                 pixel_values_videos=pixels[32:], video_grid_thw=np.array(vid))
    inputs = [Tensor(batch[k]) for k in CONTRACT_KEYS[:8]]
    want = ref(*inputs).asnumpy()
    cu = vision_cu_seqlens(batch["vision_segment_ids"])
    with pytest.raises(ValueError, match="needs vision_cu_seqlens"):
        flash(*inputs)
    got = flash(*inputs, vision_cu_seqlens=Tensor(cu)).asnumpy()
    np.testing.assert_allclose(got, want, atol=3e-2 * np.abs(want).max())
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.999
    t, heads, d = pixels.shape[0], cfg.vision.num_attention_heads, cfg.vision.kv_channels
    for fa in vit_fa:
        (call,) = fa.calls
        assert call["q"] == (t, heads, d) and call["mask"] is None
        assert call["qlen"].tolist() == call["kvlen"].tolist() == [24, 32, 40, 48] and call["qlen"].dtype == np.int64
    s = ids.shape[1]
    for fa in llm_fa:
        (call,) = fa.calls
        assert call["q"] == (1, cfg.text.num_attention_heads, s, cfg.text.kv_channels)
        assert call["k"] == (1, cfg.text.num_query_groups, s, cfg.text.kv_channels) and call["mask"] == (2048, 2048)


def test_ascend_plan_names_the_flash_primitives():
    cfg = tiny()
    pcfg = validate_parallel_config({"tensor_model_parallel_size": 2, "seq_length": 16}, cfg, 4)
    plan = build_shard_plan(cfg, pcfg, backend="Ascend", bf16=True)
    assert_plan_ok(plan)
    tnd = [e for e in plan.entries if e.prim == "flash_attention_tnd"]
    causal = [e for e in plan.entries if e.prim == "flash_attention"]
    assert len(tnd) == cfg.vision.num_layers and len(causal) == cfg.text.num_layers
    assert tnd[0].strategy == ((1, 2, 1),) * 3 and tnd[0].shapes[0][1:] == (4, 16)
    assert causal[0].strategy[3] == (1, 1) and causal[0].shapes[3] == (2048, 2048)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = Qwen2VLForConditionalGeneration(cfg, attention_backend="flash")
    apply_shard_plan(model, plan)
    att = model.image_encoder.encoder.blocks.layers[0].self_attention.core_attention
    assert att.flash_attention_tnd.in_strategy == ((1, 2, 1),) * 3
    # a matmul-backend model lacks the flash primitives: named, not silently skipped
    with pytest.raises(Exception, match="the plan uses flash attention but the model was built with the 'matmul'"):
        apply_shard_plan(Qwen2VLForConditionalGeneration(cfg), plan)
