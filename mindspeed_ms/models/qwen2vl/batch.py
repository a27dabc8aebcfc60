"""Host-side (numpy) batch layout of the Qwen2-VL family: the vision keys of the batch contract
and the M-RoPE positions, behind the interface every family's layout offers (models/registry.py):

    layout = Qwen2VLBatch(model_config)   # or Qwen2VLBatch() for the released token ids
    vis = layout.vision_inputs(input_ids, pixel_values, image_grid_thw, video_grid_thw, num_patches, num_segments)
    position_ids, rope_deltas = layout.position_ids(input_ids, image_grid_thw, video_grid_thw, attention_mask)

`vision_inputs` returns `pixel_values` (as the graph takes them) with the `vision_*` keys.
"""
import numpy as np

from mindspeed_ms.models.qwen2vl.inputs import build_vision_inputs
from mindspeed_ms.models.qwen2vl.rope import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, VISION_START_TOKEN_ID, get_rope_index


class Qwen2VLBatch:
    uses_video_seconds = False  # Qwen2.5-VL: positions take second_per_grid_ts

    def __init__(self, cfg=None):
        self.merge = cfg.vision.spatial_merge_size if cfg is not None else 2
        self.image_token_id = cfg.img_context_token_id if cfg is not None else IMAGE_TOKEN_ID
        self.video_token_id = cfg.video_token_id if cfg is not None else VIDEO_TOKEN_ID
        self.vision_start_token_id = cfg.vision_start_token_id if cfg is not None else VISION_START_TOKEN_ID

    def vision_inputs(self, input_ids, pixel_values, image_grid_thw=None, video_grid_thw=None, num_patches=None,
                      num_segments=None):
        vis = build_vision_inputs(input_ids, image_grid_thw, video_grid_thw, num_patches=num_patches,
                                  spatial_merge_size=self.merge, image_token_id=self.image_token_id,
                                  video_token_id=self.video_token_id, num_segments=num_segments)
        return {"pixel_values": np.asarray(pixel_values, np.float32), **vis}

    def rope_kwargs(self, second_per_grid_ts):
        """Family-specific arguments of `get_rope_index` (Qwen2-VL: none)."""
        if second_per_grid_ts is not None:
            raise ValueError("second_per_grid_ts is a Qwen2.5-VL input; Qwen2-VL numbers video frames 0, 1, 2, ...")
        return {}

    def position_ids(self, input_ids, image_grid_thw=None, video_grid_thw=None, attention_mask=None,
                     second_per_grid_ts=None):
        return get_rope_index(input_ids, image_grid_thw, video_grid_thw, attention_mask, self.merge,
                              self.image_token_id, self.video_token_id, self.vision_start_token_id,
                              **self.rope_kwargs(second_per_grid_ts))


QWEN2VL_BATCH = Qwen2VLBatch
