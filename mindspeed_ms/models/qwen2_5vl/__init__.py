"""Qwen2.5-VL as MindSpore Cells with MindSpeed-MM parameter names (the second model family).

What is Qwen2.5-VL's own: the ViT's RMSNorm / gated SiLU MLP / window attention (`vision.py`),
the window order of the patches and the absolute-time M-RoPE (`inputs.py`, `batch.py`), and the
model class (`model.py`). Everything else (attention core, norms, linear, rotary, the Qwen2 LLM,
loss, the batch contract) is the Qwen2-VL family's code, used as is. `inputs` and `batch` are
numpy-only; the model classes are imported lazily on first access.
"""
__all__ = ["Qwen2_5_VLForConditionalGeneration", "Qwen2VLOutput"]


def __getattr__(name):
    if name in __all__:
        from mindspeed_ms.models.qwen2_5vl import model
        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
