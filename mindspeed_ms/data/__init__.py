"""Data pipeline: tokenizer loading, image/video processor, template, datasets, collator, samplers."""
from mindspeed_ms.data.processor import Qwen2VLImageProcessor, smart_resize

__all__ = ["Qwen2VLImageProcessor", "smart_resize"]
