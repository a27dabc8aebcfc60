"""Qwen2-VL as MindSpore Cells with MindSpeed-MM parameter names.

`rope` and `inputs` are numpy-only (the data side imports them without loading MindSpore); the
model classes are imported lazily on first access.
"""
__all__ = ["Qwen2VLForConditionalGeneration", "Qwen2VLOutput"]


def __getattr__(name):
    if name in __all__:
        from mindspeed_ms.models.qwen2vl import model
        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
