"""Window order of the ViT patches (numpy), as HF's `Qwen2_5_VisionTransformerPretrainedModel.
get_window_index`: each image/frame's grid of merged patches (merge x merge patches each) is cut
into windows of `window` x `window` merged patches (the last row/column of windows may be partial),
windows ordered row by row, frames and images in order.

The batch layout uses it to hand the graph the patches in window order: every window, and every
frame, is then a contiguous run of patches, which is what the windowed and full-attention layers
mask by (and what flash attention's block ends need). The merged features come out of the merger
in window order; `inverse_order` gives, for each merged feature in the original order, where it
sits in window order (HF's `argsort(window_index)`), which `vision_gather_index` then points to.
"""
import numpy as np

from mindspeed_ms.models.qwen2vl.rope import _as_grid


def window_order(grids, spatial_merge_size=2, window=4):
    """(order [M] int64: the original merged-patch index at each window-order position,
    lengths [W] int64: merged patches per non-empty window) over all `grids` rows [n, 3] in order."""
    m, order, lengths, offset = spatial_merge_size, [], [], 0
    for t, h, w in _as_grid(grids, "grid_thw").tolist():
        lh, lw = h // m, w // m
        idx = np.arange(t * lh * lw).reshape(t, lh, lw)
        # HF pads by window - size % window, a whole empty window when it divides: those windows
        # are empty and dropped (its unique_consecutive of the block ends)
        ph, pw = lh + window - lh % window, lw + window - lw % window
        padded = np.full((t, ph, pw), -1, np.int64)
        padded[:, :lh, :lw] = idx
        wins = padded.reshape(t, ph // window, window, pw // window, window).transpose(0, 1, 3, 2, 4)
        for win in wins.reshape(-1, window * window):
            keep = win[win >= 0]
            if keep.size:
                order.append(keep + offset)
                lengths.append(keep.size)
        offset += t * lh * lw
    if not order:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(order), np.asarray(lengths, np.int64)


def patch_order(merged_order, num_patches, spatial_merge_size=2):
    """Patch-level permutation [num_patches]: the merge^2 patches of each merged patch of
    `merged_order`, then the padding patches in place."""
    unit = spatial_merge_size ** 2
    real = (merged_order[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    return np.concatenate([real, np.arange(real.size, num_patches)]).astype(np.int64)


def inverse_order(merged_order):
    """Position in window order of each merged patch of the original order."""
    inv = np.empty_like(merged_order)
    inv[merged_order] = np.arange(merged_order.size)
    return inv


def window_segment_ids(lengths, num_patches, spatial_merge_size=2):
    """One id per window (in window order, merge^2 patches per merged patch); padding patches get one
    more id. Returns [num_patches] int32."""
    ids = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths * spatial_merge_size ** 2)
    return np.concatenate([ids, np.full(num_patches - ids.size, lengths.size, np.int32)])
