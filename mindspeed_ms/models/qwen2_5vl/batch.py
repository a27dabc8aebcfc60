"""Host-side (numpy) batch layout of Qwen2.5-VL, the interface of `models.qwen2vl.batch`.

The graph inputs differ from Qwen2-VL's only in meaning (same keys, same positional order):
- `pixel_values`, `vision_pos_ids`: in window order (`inputs.window_order`);
- `vision_segment_ids` [2, N]: row 0 the image/frame of each patch (full-attention layers), row 1
  its window (the other layers); padding patches have their own id in both rows;
- `vision_gather_index`: into the merged features in window order (the inverse permutation);
- `vision_cu_seqlens` (flash backend, `num_segments=K`) [2, K]: the block ends of both rows.
`position_ids` carry Qwen2.5-VL's absolute time: video temporal step k sits at
int(k * second_per_grid_t * tokens_per_second).
"""
import numpy as np

from mindspeed_ms.models.qwen2_5vl.inputs import (inverse_order, patch_order, window_order,
                                                  window_segment_ids)
from mindspeed_ms.models.qwen2vl.batch import Qwen2VLBatch
from mindspeed_ms.models.qwen2vl.inputs import vision_cu_seqlens
from mindspeed_ms.models.qwen2vl.rope import _as_grid


class Qwen2_5VLBatch(Qwen2VLBatch):
    uses_video_seconds = True

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.window = cfg.vision.window_merged if cfg is not None else 4
        self.tokens_per_second = float(cfg.vision.tokens_per_second) if cfg is not None else 2.0

    def vision_inputs(self, input_ids, pixel_values, image_grid_thw=None, video_grid_thw=None, num_patches=None,
                      num_segments=None):
        vis = super().vision_inputs(input_ids, pixel_values, image_grid_thw, video_grid_thw, num_patches)
        n = vis["vision_segment_ids"].shape[0]
        grids = np.concatenate([_as_grid(image_grid_thw, "image_grid_thw"), _as_grid(video_grid_thw, "video_grid_thw")])
        merged, lengths = window_order(grids, self.merge, self.window)
        order = patch_order(merged, n, self.merge)
        frames = vis["vision_segment_ids"]  # frames stay contiguous runs of the same length in window order
        windows = window_segment_ids(lengths, n, self.merge)
        gather = vis["vision_gather_index"]
        takes = vis["vision_token_mask"] > 0
        if merged.size:  # the features come out in window order: point each token at its feature there
            gather = np.where(takes, inverse_order(merged)[np.where(takes, gather, 0)], gather)
        vis.update(pixel_values=vis["pixel_values"][order], vision_pos_ids=vis["vision_pos_ids"][order],
                   vision_segment_ids=np.stack([frames, windows]), vision_gather_index=gather.astype(np.int32))
        if num_segments is not None:
            real = int(merged.size * self.merge ** 2)
            vis["vision_cu_seqlens"] = np.stack([vision_cu_seqlens(frames, num_segments, real),
                                                 vision_cu_seqlens(windows, num_segments, real)])
        return vis

    def rope_kwargs(self, second_per_grid_ts):
        if second_per_grid_ts is not None:
            second_per_grid_ts = np.asarray(second_per_grid_ts, np.float64).reshape(-1)
        return {"tokens_per_second": self.tokens_per_second, "second_per_grid_ts": second_per_grid_ts}

    def position_ids(self, input_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None,
                     second_per_grid_ts=None):
        videos = len(_as_grid(video_grid_thw, "video_grid_thw"))
        if second_per_grid_ts is not None and np.asarray(second_per_grid_ts).size != videos:
            raise ValueError(f"second_per_grid_ts has {np.asarray(second_per_grid_ts).size} values for {videos} "
                             f"videos (video_grid_thw rows): pass one per video")
        return super().position_ids(input_ids, image_grid_thw, video_grid_thw, attention_mask, second_per_grid_ts)


QWEN2_5VL_BATCH = Qwen2_5VLBatch
