"""Host-side (numpy) construction of the vision part of the model batch contract.

See docs/architecture.md, "Model input contract": from `input_ids` and the image/video grids this
builds `vision_pos_ids`, `vision_segment_ids`, `vision_gather_index` and `vision_token_mask`, so the
compiled graph needs no data-dependent control flow (no masked_scatter, no cu_seqlens loops).
"""
import numpy as np

from mindspeed_ms.models.qwen2vl.rope import (IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, _as_grid,
                                              vision_position_ids)


def merged_token_count(grid_thw, spatial_merge_size=2):
    """Number of LLM tokens (merged patches) of each grid row: t*h*w / merge^2."""
    grid = _as_grid(grid_thw, "grid_thw")
    return (grid.prod(axis=1) // (spatial_merge_size ** 2)).astype(np.int64)


def check_pixel_values(pixel_values, grid_thw, patch_dim, name="pixel_values", grid_name="image_grid_thw"):
    """Raise a clear ValueError when `pixel_values` [N, patch_dim] does not fit its grids."""
    grid = _as_grid(grid_thw, grid_name)
    shape = tuple(np.shape(pixel_values))
    if len(shape) != 2:
        raise ValueError(f"{name} must be [num_patches, {patch_dim}] (C*T*P*P), got shape {shape}")
    if shape[1] != patch_dim:
        raise ValueError(f"{name} has {shape[1]} values per patch but the vision config needs "
                         f"in_channels*temporal_patch_size*patch_size^2 = {patch_dim}")
    expected = int(grid.prod(axis=1).sum())
    if shape[0] != expected:
        raise ValueError(f"{name} has {shape[0]} patches but {grid_name} {grid.tolist()} describes "
                         f"sum(t*h*w) = {expected} patches: the grid does not fit {name}")


def vision_segment_ids(image_grid_thw=None, video_grid_thw=None, num_patches=None):
    """One id per image frame / video frame (images first, then videos); padding patches up to
    `num_patches` share one extra id. Attention in the ViT is allowed only within equal ids,
    which is HF's cu_seqlens block-diagonal attention. Returns [num_patches] int32."""
    ids = []
    seg = 0
    for grid in (_as_grid(image_grid_thw, "image_grid_thw"), _as_grid(video_grid_thw, "video_grid_thw")):
        for t, h, w in grid.tolist():
            for _ in range(t):
                ids.append(np.full(h * w, seg, dtype=np.int32))
                seg += 1
    ids = np.concatenate(ids) if ids else np.zeros((0,), dtype=np.int32)
    if num_patches is not None:
        if num_patches < ids.shape[0]:
            raise ValueError(f"num_patches={num_patches} is smaller than the {ids.shape[0]} real patches of the grids")
        ids = np.concatenate([ids, np.full(num_patches - ids.shape[0], seg, dtype=np.int32)])
    return ids


def vision_token_layout(input_ids, image_grid_thw=None, video_grid_thw=None, spatial_merge_size=2,
                        image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID):
    """Where each merged vision feature goes in the text sequence.

    Image features fill the `<|image_pad|>` tokens of the batch in row-major order (HF
    masked_scatter order), then video features fill the `<|video_pad|>` tokens. Merged features are
    ordered images first, then videos, so a video token's index is offset by the image feature count.
    Returns (vision_gather_index [B, S] int32, vision_token_mask [B, S] int32).
    """
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    n_img_feat = int(merged_token_count(image_grid_thw, spatial_merge_size).sum())
    n_vid_feat = int(merged_token_count(video_grid_thw, spatial_merge_size).sum())
    img_mask = input_ids == image_token_id
    vid_mask = input_ids == video_token_id
    n_img_tok, n_vid_tok = int(img_mask.sum()), int(vid_mask.sum())
    if n_img_tok != n_img_feat:
        raise ValueError(
            f"image tokens and image features do not match: {n_img_tok} <|image_pad|> tokens in input_ids but "
            f"image_grid_thw gives {n_img_feat} features (sum(t*h*w)/{spatial_merge_size ** 2})")
    if n_vid_tok != n_vid_feat:
        raise ValueError(
            f"video tokens and video features do not match: {n_vid_tok} <|video_pad|> tokens in input_ids but "
            f"video_grid_thw gives {n_vid_feat} features (sum(t*h*w)/{spatial_merge_size ** 2})")
    gather = np.zeros(input_ids.shape, dtype=np.int32)
    flat = gather.reshape(-1)
    flat[img_mask.reshape(-1)] = np.arange(n_img_tok, dtype=np.int32)
    flat[vid_mask.reshape(-1)] = n_img_feat + np.arange(n_vid_tok, dtype=np.int32)
    token_mask = (img_mask | vid_mask).astype(np.int32)
    return gather, token_mask


def vision_cu_seqlens(segment_ids, num_segments=None, num_real_patches=None):
    """Cumulative ends of the ViT's attention blocks, one per run of equal `vision_segment_ids`
    (image frames, video frames, then the padding): flash attention's TND `actual_seq_qlen`, i.e.
    HF's `cu_seqlens` without the leading 0; the last value is the patch count. Returns [K] int32.

    `num_segments` fixes K (a compiled graph's input shape, the same on every dp rank): the padding
    after `num_real_patches` is cut into extra blocks of one patch (padding attends only to padding
    and feeds no token, so how it is cut changes nothing); too few padding patches is an error."""
    ids = np.asarray(segment_ids).reshape(-1)
    if ids.size == 0:
        raise ValueError("vision_segment_ids is empty: a batch carries at least the dummy image's patches")
    ends = np.concatenate([np.nonzero(ids[1:] != ids[:-1])[0] + 1, [ids.size]]).astype(np.int64)
    if num_segments is None:
        return ends.astype(np.int32)
    extra = num_segments - len(ends)
    if extra < 0:
        raise ValueError(f"{len(ends)} vision attention blocks (image/video frames and padding) exceed "
                         f"num_segments={num_segments}: raise the collator's vision_segments")
    if extra:
        real = ids.size if num_real_patches is None else int(num_real_patches)
        pad = ids.size - real
        if pad < extra + 1:
            raise ValueError(f"{len(ends)} vision blocks need {extra} more to reach num_segments={num_segments}, "
                             f"cut from the padding patches, but only {pad} padding patches follow the {real} real "
                             f"ones: use a larger num_patches (patch bucket) or a smaller vision_segments")
        ends = np.concatenate([ends[:-1], real + np.arange(1, extra + 1), [ids.size]])
    return ends.astype(np.int32)


def offset_vision_inputs(vis, dp_rank, spatial_merge_size=2):
    """One dp rank's vision keys made global, for a step where the patches of all dp ranks form one
    sequence (semi-auto parallel: the global tensors are the ranks' local ones concatenated, every
    rank with the same N patches). Segment ids move to [r*N, (r+1)*N) (ids never exceed the patch
    count, so ranks never share one), `vision_gather_index` points into the global merged features
    (+ r*N/merge^2 where a token takes a feature) and `vision_cu_seqlens` ends move by r*N."""
    n = int(np.asarray(vis["vision_segment_ids"]).shape[-1])  # Qwen2.5-VL: [2, N] (frame and window rows)
    if n % (spatial_merge_size ** 2):
        raise ValueError(f"{n} patches is not a multiple of spatial_merge_size^2 = {spatial_merge_size ** 2}")
    out = dict(vis)
    out["vision_segment_ids"] = (np.asarray(vis["vision_segment_ids"]) + dp_rank * n).astype(np.int32)
    takes = np.asarray(vis["vision_token_mask"]) > 0
    gather = np.asarray(vis["vision_gather_index"])
    out["vision_gather_index"] = np.where(takes, gather + dp_rank * (n // spatial_merge_size ** 2),
                                          gather).astype(np.int32)
    if "vision_cu_seqlens" in vis:
        out["vision_cu_seqlens"] = (np.asarray(vis["vision_cu_seqlens"]) + dp_rank * n).astype(np.int32)
    return out


def build_vision_inputs(input_ids, image_grid_thw=None, video_grid_thw=None, num_patches=None,
                        spatial_merge_size=2, image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
                        num_segments=None):
    """The vision keys of the batch contract from input_ids and grids.

    `num_patches` pads the patch axis (the collator's patch bucket; must keep the merge groups
    whole): padded patches get position (0, 0) and their own segment id, and no token gathers them.
    Returns a dict with vision_pos_ids [N, 2], vision_segment_ids [N], vision_gather_index [B, S],
    vision_token_mask [B, S] (all int32), and with `num_segments` also vision_cu_seqlens
    [num_segments] (the flash backend's block ends, `vision_cu_seqlens`).
    """
    grids = [g for g in (_as_grid(image_grid_thw, "image_grid_thw"), _as_grid(video_grid_thw, "video_grid_thw"))]
    pos = np.concatenate([vision_position_ids(g, spatial_merge_size) for g in grids], axis=0)
    real = pos.shape[0]
    if num_patches is None:
        num_patches = real
    if num_patches % (spatial_merge_size ** 2):
        raise ValueError(f"num_patches={num_patches} must be a multiple of spatial_merge_size^2={spatial_merge_size ** 2}")
    seg = vision_segment_ids(grids[0], grids[1], num_patches)
    pos = np.concatenate([pos, np.zeros((num_patches - real, 2), dtype=np.int32)], axis=0)
    gather, token_mask = vision_token_layout(input_ids, grids[0], grids[1], spatial_merge_size,
                                             image_token_id, video_token_id)
    out = {"vision_pos_ids": pos, "vision_segment_ids": seg,
           "vision_gather_index": gather, "vision_token_mask": token_mask}
    if num_segments is not None:
        out["vision_cu_seqlens"] = vision_cu_seqlens(seg, num_segments, real)
    return out
