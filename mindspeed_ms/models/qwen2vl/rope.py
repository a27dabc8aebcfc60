"""Rotary position indices for Qwen2-VL, computed on the host in numpy.

`get_rope_index` gives the 3-D (temporal, height, width) M-RoPE positions of the text decoder and
`vision_position_ids` the 2-D (h, w) rotary positions of the ViT patches. Both run on the data side
(collator / eager API) so that the compiled graph only sees fixed-shape integer tensors.
The semantics follow HF transformers' `Qwen2VLModel.get_rope_index` and
`Qwen2VisionTransformerPretrainedModel.rot_pos_emb` exactly (checked in tests).
"""
import numpy as np

IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_TOKEN_ID = 151652


def _as_grid(grid, name):
    if grid is None:
        return np.zeros((0, 3), dtype=np.int64)
    grid = np.asarray(grid, dtype=np.int64)
    if grid.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"{name} must have shape [n, 3] (t, h, w per item), got {grid.shape}")
    return grid


def get_rope_index(input_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None,
                   spatial_merge_size=2, image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
                   vision_start_token_id=VISION_START_TOKEN_ID, tokens_per_second=None,
                   second_per_grid_ts=None):
    """M-RoPE positions for a batch.

    Args:
        input_ids: [B, S] token ids.
        image_grid_thw / video_grid_thw: [n, 3] patch grids (t, h, w) of all images / videos of the
            batch, in order of appearance (sample 0 first).
        attention_mask: [B, S], 1 for real tokens (left or right padding); None = all ones.
        tokens_per_second: None (Qwen2-VL: temporal grid step k of a video has position k) or
            Qwen2.5-VL's absolute time: step k has position int(k * second_per_grid_ts[v] *
            tokens_per_second), in float32 as MindSpeed-MM computes it (second_per_grid_ts: one
            value per video, seconds per temporal patch; None = 1.0 each, as HF).
    Returns:
        position_ids [3, B, S] int32 (padding positions hold 1, as in HF) and
        rope_deltas [B, 1] int64 (max position + 1 - S; used to continue positions in generation).
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    bsz, seq = input_ids.shape
    image_grid_thw = _as_grid(image_grid_thw, "image_grid_thw")
    video_grid_thw = _as_grid(video_grid_thw, "video_grid_thw")
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    attention_mask = np.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")

    position_ids = np.ones((3, bsz, seq), dtype=np.int64)
    deltas = np.zeros((bsz, 1), dtype=np.int64)
    image_index, video_index = 0, 0
    for i in range(bsz):
        valid = attention_mask[i] == 1
        tokens = input_ids[i][valid].tolist()
        n = len(tokens)
        # An image/video block is announced by <|vision_start|> followed by its pad token.
        starts = [k for k, tok in enumerate(tokens) if tok == vision_start_token_id and k + 1 < n]
        following = [tokens[k + 1] for k in starts]
        remain_images = following.count(image_token_id)
        remain_videos = following.count(video_token_id)
        pieces = []
        st = 0
        for _ in range(remain_images + remain_videos):
            ed_image = tokens.index(image_token_id, st) if (remain_images > 0 and image_token_id in tokens[st:]) else n + 1
            ed_video = tokens.index(video_token_id, st) if (remain_videos > 0 and video_token_id in tokens[st:]) else n + 1
            if ed_image < ed_video:
                if image_index >= len(image_grid_thw):
                    raise ValueError(
                        f"sample {i} has more images (<|vision_start|><|image_pad|> blocks) than image_grid_thw rows "
                        f"({len(image_grid_thw)}): pass one grid per image")
                t, h, w = image_grid_thw[image_index]
                seconds = 0.0
                image_index += 1
                remain_images -= 1
                ed = ed_image
            else:
                if video_index >= len(video_grid_thw):
                    raise ValueError(
                        f"sample {i} has more videos (<|vision_start|><|video_pad|> blocks) than video_grid_thw rows "
                        f"({len(video_grid_thw)}): pass one grid per video")
                t, h, w = video_grid_thw[video_index]
                seconds = 1.0 if second_per_grid_ts is None else float(second_per_grid_ts[video_index])
                video_index += 1
                remain_videos -= 1
                ed = ed_video
            gt, gh, gw = int(t), int(h) // spatial_merge_size, int(w) // spatial_merge_size
            text_len = ed - st
            st_idx = pieces[-1].max() + 1 if pieces else 0
            pieces.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + st_idx)
            frames = np.arange(gt)
            if tokens_per_second is not None:
                frames = (frames.astype(np.float32) * np.float32(seconds) * np.float32(tokens_per_second)).astype(np.int64)
            t_idx = np.repeat(frames, gh * gw)
            h_idx = np.tile(np.repeat(np.arange(gh), gw), gt)
            w_idx = np.tile(np.arange(gw), gt * gh)
            pieces.append(np.stack([t_idx, h_idx, w_idx]) + text_len + st_idx)
            st = ed + gt * gh * gw
        if st < n:
            st_idx = pieces[-1].max() + 1 if pieces else 0
            text_len = n - st
            pieces.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + st_idx)
        if pieces:
            llm_pos = np.concatenate(pieces, axis=1)
            if llm_pos.shape[1] != n:
                raise ValueError(
                    f"sample {i}: vision blocks overrun the sequence ({llm_pos.shape[1]} positions for {n} tokens); "
                    f"the number of pad tokens after <|vision_start|> must equal t*h*w/{spatial_merge_size ** 2} of its grid")
            position_ids[:, i, valid] = llm_pos
            deltas[i, 0] = llm_pos.max() + 1 - seq
        else:
            # empty sample (all padding): HF yields max(cumsum(mask) - 1 with pads = 1) + 1 - S
            deltas[i, 0] = 1 + 1 - seq
    return position_ids.astype(np.int32), deltas


def vision_position_ids(grid_thw, spatial_merge_size=2):
    """(h, w) rotary positions of each ViT patch, in the processor's patch order.

    The processor emits patches so that each merge x merge window is contiguous; the positions are
    permuted the same way and repeated over the t frames. Returns [sum(t*h*w), 2] int32.
    """
    grid_thw = _as_grid(grid_thw, "grid_thw")
    m = spatial_merge_size
    out = []
    for t, h, w in grid_thw.tolist():
        if h % m or w % m:
            raise ValueError(f"grid (t={t}, h={h}, w={w}): h and w must be multiples of spatial_merge_size={m}")
        hpos = np.broadcast_to(np.arange(h)[:, None], (h, w)).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3)
        wpos = np.broadcast_to(np.arange(w)[None, :], (h, w)).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3)
        pos = np.stack([hpos.reshape(-1), wpos.reshape(-1)], axis=-1)
        out.append(np.tile(pos, (t, 1)))
    if not out:
        return np.zeros((0, 2), dtype=np.int32)
    return np.concatenate(out, axis=0).astype(np.int32)


def vision_rope_inv_freq(head_dim, theta=10000.0):
    """inv_freq of the ViT rotary table (dim = head_dim // 2, as HF's VisionRotaryEmbedding)."""
    dim = head_dim // 2
    return (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))).astype(np.float32)


def text_rope_inv_freq(head_dim, theta=1000000.0):
    """inv_freq of the text decoder's M-RoPE (default rope type)."""
    return (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))).astype(np.float32)
