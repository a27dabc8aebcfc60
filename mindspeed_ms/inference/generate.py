"""Autoregressive generation for Qwen2-VL: prefill once with the images, then decode one token at a
time from the text decoder's KV cache (PYNATIVE), or recompute the whole sequence every step.

M-RoPE positions: the prompt gets its 3-D (t, h, w) positions from `rope.get_rope_index`, which
also returns `rope_deltas` = (max position + 1) - prompt length. A generated token at absolute
index `i` (counting the prompt, padding included) then has position `i + rope_deltas` on all three
rows, exactly as HF's `Qwen2VLForConditionalGeneration.prepare_inputs_for_generation` does; with left
padding this is each row's own "last position + 1, + 2, ...".

Both paths must give the same tokens; `tests/test_generation_kv_cache.py` checks that, and checks
both against transformers' `generate`.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from mindspore import Tensor

from mindspeed_ms.inference.sampling import SamplingConfig, TokenChooser
from mindspeed_ms.models.qwen2vl.language import causal_padding_mask

IM_END_ID = 151645
ENDOFTEXT_ID = 151643


@dataclass
class GenerationOutput:
    """`tokens[b]`: the new token ids of row b, up to and including the stop token if one came.
    `stopped[b]`: whether row b ended on a stop token (False: it hit max_new_tokens)."""
    tokens: List[List[int]] = field(default_factory=list)
    stopped: List[bool] = field(default_factory=list)


def _as_2d(x, name):
    x = np.asarray(x.asnumpy() if isinstance(x, Tensor) else x)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"{name} must be [batch, seq], got shape {x.shape}")
    return x


class _Stopper:
    def __init__(self, batch, stop_token_ids, stop_check=None, streamer=None):
        self.stop = set(int(t) for t in stop_token_ids)
        self.done = np.zeros(batch, dtype=bool)
        self.tokens = [[] for _ in range(batch)]
        self.stop_check = stop_check
        self.streamer = streamer

    def push(self, next_ids):
        live = ~self.done
        for b, t in enumerate(next_ids.tolist()):
            if not self.done[b]:
                self.tokens[b].append(t)
                hit = t in self.stop
                # asked for every token (stop ids included) so a caller can follow each row's text
                if self.stop_check is not None and self.stop_check(b, self.tokens[b]):
                    hit = True
                if hit:
                    self.done[b] = True
        if self.streamer is not None:
            self.streamer(next_ids, live)

    def output(self):
        return GenerationOutput(tokens=self.tokens, stopped=self.done.tolist())


def generate(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
             pixel_values_videos=None, video_grid_thw=None, max_new_tokens=32,
             sampling: Optional[SamplingConfig] = None, stop_token_ids: Sequence[int] = (IM_END_ID,),
             pad_token_id: int = ENDOFTEXT_ID, use_cache: bool = True, process_logits=None, stop_check=None,
             streamer=None) -> GenerationOutput:
    """Generate up to `max_new_tokens` tokens after each prompt row.

    `input_ids` [B, S] (or [S]); batches must be LEFT-padded (`attention_mask` 0 on the left) so
    that every row's next token is appended at the same index. Vision inputs as in the HF-style
    forward (all images of the batch in order). Rows stop independently at a token of
    `stop_token_ids`; finished rows are fed `pad_token_id` (their outputs are ignored).
    `use_cache=False` recomputes the full sequence (vision included) at every step: slow, and the
    reference the cached path is tested against.

    Hooks (the HF-style `model.generate` and the server use them):
    `process_logits(ids, logits) -> logits`: ids [B, L] (prompt and tokens so far), logits [B, V] of
    the next position, before the token is chosen (repetition penalty, min_new_tokens);
    `stop_check(row, new_tokens) -> bool`: row also stops after this token (stop strings);
    `streamer(next_ids [B], live [B] bool)`: called after every step with the new tokens (rows that
    had already stopped are not live).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids = _as_2d(input_ids, "input_ids").astype(np.int32)
    mask = np.ones_like(input_ids) if attention_mask is None else _as_2d(attention_mask, "attention_mask").astype(np.int32)
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {input_ids.shape}")
    if input_ids.shape[0] > 1 and (mask[:, -1] == 0).any():
        raise ValueError("batched generation needs LEFT padding: the last column of attention_mask has zeros "
                         "(pad on the left, e.g. tokenizer.padding_side = 'left')")
    # a ready TokenChooser (e.g. one with logits processors) is used as is
    chooser = sampling if isinstance(sampling, TokenChooser) else TokenChooser(sampling or SamplingConfig())
    if process_logits is not None:
        chooser = _Processed(chooser, process_logits)
    stopper = _Stopper(input_ids.shape[0], stop_token_ids, stop_check, streamer)
    vision = dict(pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                  pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw)
    if use_cache:
        _generate_cached(model, input_ids, mask, vision, max_new_tokens, chooser, stopper, pad_token_id)
    else:
        _generate_recompute(model, input_ids, mask, vision, max_new_tokens, chooser, stopper, pad_token_id)
    return stopper.output()


def _last_logits(logits):
    return logits[:, -1, :].asnumpy()


class _Processed:
    """A chooser that first hands the logits and the ids so far to `process_logits`. Keeps the ids
    itself (the cached path feeds the decoder one token at a time)."""

    def __init__(self, chooser, process_logits):
        self.chooser, self.process_logits = chooser, process_logits
        self.ids = None

    def start(self, ids):
        self.ids = np.asarray(ids, dtype=np.int64)

    def __call__(self, logits):
        nxt = self.chooser(self.process_logits(self.ids, logits))
        self.ids = np.concatenate([self.ids, nxt[:, None].astype(np.int64)], axis=1)
        return nxt

    def fed(self, nxt):
        """What was really appended (finished rows get the pad token, as the model is fed)."""
        self.ids[:, -1] = nxt


def _generate_recompute(model, ids, mask, vision, max_new, chooser, stopper, pad_id):
    if isinstance(chooser, _Processed):
        chooser.start(ids)
    for _ in range(max_new):
        out = model(input_ids=ids, attention_mask=mask, **vision)
        nxt = chooser(_last_logits(out.logits))
        stopper.push(nxt)
        if stopper.done.all():
            return
        nxt = np.where(stopper.done, pad_id, nxt).astype(np.int32)
        if isinstance(chooser, _Processed):
            chooser.fed(nxt)
        ids = np.concatenate([ids, nxt[:, None]], axis=1)
        mask = np.concatenate([mask, np.ones_like(nxt[:, None])], axis=1)


def _generate_cached(model, ids, mask, vision, max_new, chooser, stopper, pad_id):
    batch, rope_deltas = model.prepare_batch(ids, mask, **vision)
    t = {k: Tensor(v) for k, v in batch.items()}
    embeds = model.merge_vision(t["input_ids"], t["pixel_values"], t["vision_pos_ids"], t["vision_segment_ids"],
                                t["vision_gather_index"], t["vision_token_mask"])
    decoder = model.text_decoder
    # prefill: only the last position's logits are needed; the output layer on all S positions
    # would hold B x S x vocab floats (GBs for images at MindSpeed-MM's min_pixels)
    cos, sin = decoder.rotary(t["position_ids"])
    mask0 = causal_padding_mask(t["attention_mask"], embeds.shape[1])
    hidden, past = decoder.decoder(embeds, cos, sin, mask0, None)
    if isinstance(chooser, _Processed):
        chooser.start(ids)
    nxt = chooser(_last_logits(decoder.logits(hidden[:, -1:, :])))
    length = ids.shape[1]
    for _ in range(max_new - 1):
        stopper.push(nxt)
        if stopper.done.all():
            return
        nxt = np.where(stopper.done, pad_id, nxt).astype(np.int32)
        if isinstance(chooser, _Processed):
            chooser.fed(nxt)
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int32)], axis=1)
        # the new token sits at index `length`; its M-RoPE position is length + rope_deltas on all rows
        pos = np.broadcast_to((length + rope_deltas).astype(np.int32)[None], (3, ids.shape[0], 1)).copy()
        embeds = decoder.embedding(Tensor(nxt[:, None]))
        logits, past = decoder(embeds, Tensor(pos), Tensor(mask), past, True)
        nxt = chooser(_last_logits(logits))
        length += 1
    stopper.push(nxt)
