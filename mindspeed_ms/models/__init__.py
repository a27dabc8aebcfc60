"""Model families (one folder each: qwen2vl/, qwen2_5vl/), the shared layers (layers/) and the
family registry (registry.py).

`from_pretrained(hf_dir)` builds the model of any registered family from an HF checkpoint
directory, choosing the class by config.json's `model_type`.
"""


def from_pretrained(hf_dir, attention_backend="matmul", **kwargs):
    """The model class of `hf_dir`'s family (config.json `model_type`), loaded with its weights."""
    from mindspeed_ms.checkpoint.hf_io import load_hf_config
    from mindspeed_ms.models.registry import family_of_hf_config
    family = family_of_hf_config(load_hf_config(hf_dir))
    return family.model_class().from_pretrained(hf_dir, attention_backend=attention_backend, **kwargs)


def model_class_for(cfg):
    """The model class of a loaded model config (model.json `model_id`)."""
    from mindspeed_ms.models.registry import family_of
    return family_of(cfg).model_class()
