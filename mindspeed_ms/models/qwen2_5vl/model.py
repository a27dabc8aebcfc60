"""Qwen2_5_VLForConditionalGeneration: the Qwen2-VL model class with the Qwen2.5-VL image encoder
and batch layout. Same calls as Qwen2-VL (models/qwen2vl/model.py): the batch contract, or HF style
with `second_per_grid_ts` for videos; returns `.logits` / `.loss` / `.rope_deltas`."""
from mindspeed_ms.models.qwen2_5vl.batch import Qwen2_5VLBatch
from mindspeed_ms.models.qwen2_5vl.vision import Qwen2_5ImageEncoder
from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration, Qwen2VLOutput

__all__ = ["Qwen2_5_VLForConditionalGeneration", "Qwen2VLOutput"]


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2.5-VL with MindSpeed-MM parameter names (`image_encoder.*`, `text_decoder.*`)."""
    image_encoder_cls = Qwen2_5ImageEncoder
    batch_layout_cls = Qwen2_5VLBatch
