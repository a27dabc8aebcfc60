"""Qwen2VLForConditionalGeneration: image encoder + text decoder + shifted CE loss.

Two ways to call it:
- the batch contract of docs/architecture.md (what the collator builds and the compiled training
  step feeds): `model(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
  vision_segment_ids, vision_gather_index, vision_token_mask, labels=None, loss_weights=None)`
  -> logits, or (loss, logits) when labels are given. Shape-static, no host logic: this is
  `construct`, run in GRAPH or PYNATIVE mode.
- HF style: `out = model(input_ids=..., attention_mask=..., pixel_values=..., image_grid_thw=...,
  pixel_values_videos=..., video_grid_thw=..., labels=...)` with numpy arrays or Tensors; the
  batch contract is built on the host (rope.py / inputs.py) and `construct` is called.
  Returns `Qwen2VLOutput` with `.logits`, `.loss` (labels given), `.rope_deltas`.
"""
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindspeed_ms.config.model_config import Qwen2VLConfig, config_from_hf
from mindspeed_ms.models.layers.linear_cross_entropy import LinearCrossEntropy
from mindspeed_ms.models.qwen2vl.batch import Qwen2VLBatch
from mindspeed_ms.models.qwen2vl.hf_api import HFApiMixin, read_generation_config
from mindspeed_ms.models.qwen2vl.inputs import check_pixel_values
from mindspeed_ms.models.qwen2vl.language import TextDecoder
from mindspeed_ms.models.qwen2vl.loss import CausalLMLoss
from mindspeed_ms.models.qwen2vl.projector import ImageEncoder

CONTRACT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision_pos_ids",
                 "vision_segment_ids", "vision_gather_index", "vision_token_mask", "labels", "loss_weights")
# batch keys kept for host-side checks only; the graph does not take them
HOST_ONLY_KEYS = ("image_grid_thw", "video_grid_thw")
HF_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
           "video_grid_thw", "second_per_grid_ts", "labels", "loss_weights")


@dataclass
class Qwen2VLOutput:
    logits: Any
    loss: Optional[Any] = None
    rope_deltas: Optional[np.ndarray] = None
    past_key_values: Optional[tuple] = None


def decode_position_ids(rope_deltas, cache_len, n_new=1):
    """M-RoPE positions [3, B, n_new] (int32) of generated tokens: text positions continue from the
    prompt's maximum, i.e. `cache_len + arange(n_new) + rope_deltas` on all three rows (HF)."""
    deltas = np.asarray(rope_deltas).reshape(-1, 1)
    pos = cache_len + np.arange(n_new)[None, :] + deltas
    return np.broadcast_to(pos[None], (3,) + pos.shape).astype(np.int32)


def _np(x, dtype=None):
    if x is None:
        return None
    if isinstance(x, Tensor):
        x = x.asnumpy()
    x = np.asarray(x)
    return x.astype(dtype) if dtype is not None else x


class Qwen2VLForConditionalGeneration(HFApiMixin, nn.Cell):
    """The Qwen2-VL model with MindSpeed-MM parameter names (`image_encoder.*`, `text_decoder.*`).

    `attention_backend`: "matmul" (CPU, reference) or "flash" (Ascend FlashAttentionScore).
    A family built on this class (Qwen2.5-VL) swaps `image_encoder_cls` and `batch_layout_cls`.
    `generate` / `save_pretrained` (HF style) come from `hf_api.HFApiMixin`; `generation_config`
    holds the checkpoint's generation_config.json (None: transformers' defaults).
    """
    image_encoder_cls = ImageEncoder
    batch_layout_cls = Qwen2VLBatch

    def __init__(self, config: Qwen2VLConfig, attention_backend="matmul", dtype=ms.float32):
        super().__init__()
        self.config = config
        self.generation_config = None
        self.batch_layout = self.batch_layout_cls(config)
        self.image_encoder = self.image_encoder_cls(config.vision, config.projector, attention_backend, dtype)
        self.text_decoder = TextDecoder(config.text, attention_backend, dtype)
        self.loss_fn = CausalLMLoss()
        # training loss (`train_loss`): output layer + cross entropy fused over token chunks, so the
        # [tokens x vocab] logits and their gradient never exist whole; False = the plain path
        self.chunked_loss = True
        self.linear_cross_entropy = LinearCrossEntropy(num_chunks=4)
        self.gather_features = ops.Gather()
        self.select = ops.Select()

    # ------------------------------------------------------------------ graph path
    def merge_vision(self, input_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                     vision_gather_index, vision_token_mask, vision_cu_seqlens=None):
        """Token embeddings with vision features placed at the image/video pad tokens.
        (`vision_cu_seqlens`: the flash backend's ViT block ends, see `inputs.vision_cu_seqlens`.)"""
        embeds = self.text_decoder.embedding(input_ids)
        feats = self.image_encoder(pixel_values, vision_pos_ids, vision_segment_ids, vision_cu_seqlens)
        b, s = input_ids.shape
        gathered = ops.reshape(self.gather_features(feats, ops.reshape(vision_gather_index, (-1,)), 0),
                               (b, s, -1))
        take = ops.broadcast_to(ops.expand_dims(vision_token_mask > 0, -1), embeds.shape)
        return self.select(take, ops.cast(gathered, embeds.dtype), embeds)

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                  vision_segment_ids, vision_gather_index, vision_token_mask, labels=None, loss_weights=None,
                  vision_cu_seqlens=None):
        embeds = self.merge_vision(input_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                                   vision_gather_index, vision_token_mask, vision_cu_seqlens)
        logits = self.text_decoder(embeds, position_ids, attention_mask)
        if labels is None:
            return logits
        return self.loss_fn(logits, labels, loss_weights), logits

    def train_loss(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                   vision_segment_ids, vision_gather_index, vision_token_mask, labels, loss_weights,
                   vision_cu_seqlens=None, loss_index=None):
        """The loss of `construct` (same value and gradients) without returning logits: what the
        training step differentiates. With `chunked_loss` the output layer and the cross entropy run
        fused over token chunks (needs B*S divisible by 4: the collator pads to multiples of 8).
        `vision_cu_seqlens`: the flash ViT's block ends (the sharded Ascend step passes them).
        `loss_index` [K] (K a multiple of 8; `training.loss_weights.loss_rows`): the flat positions
        with a non-zero loss weight; the output layer then runs on these K rows only."""
        weight = self.text_decoder.output_weight()
        # vocab-parallel logits (tp > 1, parallel.shard_plan) keep the plain, sharded loss
        if not self.chunked_loss or weight is None or self.loss_fn.vocab_parallel:
            loss, _ = self.construct(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                                     vision_segment_ids, vision_gather_index, vision_token_mask, labels, loss_weights,
                                     vision_cu_seqlens)
            return loss
        embeds = self.merge_vision(input_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                                   vision_gather_index, vision_token_mask, vision_cu_seqlens)
        hidden = self.text_decoder.hidden_states(embeds, position_ids, attention_mask)
        nll_targets, valid = self.loss_fn.shifted_targets(labels)
        if loss_weights is None:
            token_weights = valid / ops.maximum(valid.sum(), 1.0)
        else:
            token_weights = valid * ops.cast(loss_weights, ms.float32)
        hidden = ops.reshape(hidden, (-1, hidden.shape[-1]))
        nll_targets = ops.reshape(nll_targets, (-1,))
        token_weights = ops.reshape(token_weights, (-1,))
        if loss_index is not None:
            # answer-only SFT: most positions (prompt, image tokens, padding) carry no loss; their
            # rows would cost [tokens x vocab] matmuls for nothing
            hidden = self.gather_features(hidden, loss_index, 0)
            nll_targets = self.gather_features(nll_targets, loss_index, 0)
            token_weights = self.gather_features(token_weights, loss_index, 0)
        loss, _, _, _ = self.linear_cross_entropy(hidden, weight, nll_targets, token_weights)
        return loss

    # ------------------------------------------------------------------ generation (KV cache)
    def prefill(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                vision_segment_ids, vision_gather_index, vision_token_mask):
        """Prompt pass for generation (PYNATIVE). Takes the contract tensors (e.g. from
        `prepare_batch`) and returns `(logits [B, S, V], past_key_values)`, the cache being one
        `(k, v)` per layer, each [B, kv_heads, S, head_dim]."""
        embeds = self.merge_vision(input_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                                   vision_gather_index, vision_token_mask)
        return self.text_decoder(embeds, position_ids, attention_mask, None, True)

    def decode(self, input_ids, attention_mask, position_ids, past_key_values):
        """One decode step for new text tokens `input_ids` [B, n] (PYNATIVE).

        `attention_mask` [B, cache_len + n] covers the cached and the new positions;
        `position_ids` [3, B, n] come from `decode_position_ids(rope_deltas, cache_len, n)`.
        Returns `(logits [B, n, V], past_key_values)` with the cache grown by n."""
        embeds = self.text_decoder.embedding(input_ids)
        return self.text_decoder(embeds, position_ids, attention_mask, past_key_values, True)

    # ------------------------------------------------------------------ HF-style path
    def __call__(self, *args, **kwargs):
        if args or "vision_segment_ids" in kwargs:
            for key in HOST_ONLY_KEYS:
                kwargs.pop(key, None)
            return super().__call__(*args, **kwargs)
        return self.forward_hf(**kwargs)

    def prepare_batch(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
                      pixel_values_videos=None, video_grid_thw=None, labels=None, loss_weights=None,
                      second_per_grid_ts=None):
        """Host side: the contract batch (numpy) and rope_deltas from HF-style inputs (the family's
        `batch_layout` builds the vision keys and positions)."""
        cfg = self.config
        merge = cfg.vision.spatial_merge_size
        input_ids = _np(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        attention_mask = np.ones_like(input_ids) if attention_mask is None else _np(attention_mask).reshape(input_ids.shape)
        if (pixel_values is None) != (image_grid_thw is None):
            raise ValueError("pixel_values and image_grid_thw must be given together")
        if (pixel_values_videos is None) != (video_grid_thw is None):
            raise ValueError("pixel_values_videos and video_grid_thw must be given together")
        patch_dim = cfg.vision.patch_dim
        pieces = []
        if pixel_values is not None:
            check_pixel_values(_np(pixel_values), _np(image_grid_thw), patch_dim, "pixel_values", "image_grid_thw")
            pieces.append(_np(pixel_values, np.float32))
        if pixel_values_videos is not None:
            check_pixel_values(_np(pixel_values_videos), _np(video_grid_thw), patch_dim,
                               "pixel_values_videos", "video_grid_thw")
            pieces.append(_np(pixel_values_videos, np.float32))
        image_grid_thw, video_grid_thw = _np(image_grid_thw), _np(video_grid_thw)
        if pieces:
            pixels = np.concatenate(pieces, axis=0)
        else:
            # no vision input: one unreferenced dummy window keeps the same graph (as the collator does)
            pixels = np.zeros((merge * merge, patch_dim), dtype=np.float32)
        vis = self.batch_layout.vision_inputs(input_ids, pixels, image_grid_thw, video_grid_thw, pixels.shape[0])
        position_ids, rope_deltas = self.batch_layout.position_ids(
            input_ids, image_grid_thw, video_grid_thw, attention_mask, _np(second_per_grid_ts))
        batch = {"input_ids": input_ids.astype(np.int32), "attention_mask": attention_mask.astype(np.int32),
                 "position_ids": position_ids, **vis}
        if labels is not None:
            batch["labels"] = _np(labels).reshape(input_ids.shape).astype(np.int32)
        if loss_weights is not None:
            batch["loss_weights"] = _np(loss_weights, np.float32).reshape(input_ids.shape)
        return batch, rope_deltas

    def forward_hf(self, input_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None,
                   pixel_values_videos=None, video_grid_thw=None, labels=None, loss_weights=None,
                   second_per_grid_ts=None, **unknown):
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}; accepted: {', '.join(HF_KEYS)}")
        if input_ids is None:
            raise ValueError("input_ids is required")
        batch, rope_deltas = self.prepare_batch(input_ids, attention_mask, pixel_values, image_grid_thw,
                                                pixel_values_videos, video_grid_thw, labels, loss_weights,
                                                second_per_grid_ts)
        args = [Tensor(batch[k]) for k in CONTRACT_KEYS[:8]]
        kwargs = {}
        if "labels" in batch:
            kwargs["labels"] = Tensor(batch["labels"])
        if "loss_weights" in batch:
            kwargs["loss_weights"] = Tensor(batch["loss_weights"])
        out = super().__call__(*args, **kwargs)
        if "labels" in batch:
            return Qwen2VLOutput(logits=out[1], loss=out[0], rope_deltas=rope_deltas)
        return Qwen2VLOutput(logits=out, rope_deltas=rope_deltas)

    # ------------------------------------------------------------------ weights
    def load_mm_state_dict(self, state_dict, strict=True):
        """Load numpy arrays (or Tensors) by MindSpeed-MM name. With `strict`, a missing or unknown
        name or a shape mismatch is an error listing the names.

        Tied embeddings: a pipeline-parallel checkpoint carries the last stage's copy of the table as
        `output_layer.weight`; it fills the model's copy (`add_output_layer_copy`) and is dropped by a
        model without one (pp 1: the head is the embedding). A model with a copy loading a pp 1
        checkpoint takes the copy from the embedding, as mm-convert would write it."""
        state_dict = self._fit_tied_output(state_dict)
        params = self.parameters_dict()
        unknown = sorted(set(state_dict) - set(params))
        missing = sorted(set(params) - set(state_dict))
        if strict and (unknown or missing):
            raise ValueError(f"state dict does not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                             f"unknown {unknown[:8]}{'...' if len(unknown) > 8 else ''}")
        for name, value in state_dict.items():
            if name not in params:
                continue
            p = params[name]
            arr = _np(value)
            if tuple(arr.shape) != tuple(p.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(arr.shape)} != model shape {tuple(p.shape)}")
            if arr.dtype != np.float32:  # e.g. ml_dtypes.bfloat16 from safetensors
                arr = arr.astype(np.float32)
            p.set_data(Tensor(arr, dtype=p.dtype))
        return missing, unknown

    def _fit_tied_output(self, state_dict):
        from mindspeed_ms.checkpoint.names import MM_EMBED, MM_OUTPUT
        if not self.text_decoder.tied:
            return state_dict
        if self.text_decoder.output_copy and MM_OUTPUT not in state_dict and MM_EMBED in state_dict:
            return {**state_dict, MM_OUTPUT: state_dict[MM_EMBED]}
        if not self.text_decoder.output_copy and MM_OUTPUT in state_dict:
            return {k: v for k, v in state_dict.items() if k != MM_OUTPUT}
        return state_dict

    def mm_state_dict(self):
        """name -> numpy array of every parameter (MindSpeed-MM names)."""
        return {name: p.asnumpy() for name, p in self.parameters_dict().items()}

    @classmethod
    def from_pretrained(cls, hf_dir, attention_backend="matmul", dtype=ms.float32):
        """Build from an HF checkpoint directory (config.json + safetensors, single or sharded).
        `mindspeed_ms.models.from_pretrained(hf_dir)` picks the class from config.json's model_type."""
        from mindspeed_ms.checkpoint.hf_io import load_hf_config, load_hf_state_dict
        from mindspeed_ms.checkpoint.names import hf_to_mm_state_dict
        from mindspeed_ms.models.registry import family_of
        hf_config = load_hf_config(hf_dir)
        cfg = config_from_hf(hf_config)
        family = family_of(cfg)
        if family.model_class() is not cls:
            raise ValueError(f"{hf_dir} holds a {family.display} checkpoint (model_type "
                             f"'{family.hf_model_type}'): load it with {family.pieces['model_class'].split(':')[1]}"
                             f" or mindspeed_ms.models.from_pretrained")
        model = cls(cfg, attention_backend, dtype)
        model.load_mm_state_dict(hf_to_mm_state_dict(load_hf_state_dict(hf_dir), hf_config))
        model.generation_config = read_generation_config(hf_dir)
        return model
