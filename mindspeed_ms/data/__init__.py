"""Data pipeline: tokenizer loading, image/video processor, template, datasets, collator, samplers.

    from mindspeed_ms.data import Qwen2VLImageProcessor          # numpy + PIL, no torch
    proc = Qwen2VLProcessor.from_pretrained(HF_DIR)              # transformers' processor API
    train, val = build_datasets(load_data_json("data_7b.json"), seq_length=1024, seed=1234)
    collate = build_collator(cfg, seq_length=1024)               # batch contract of docs/architecture.md
    sampler = StatefulDistributedSampler(len(train), micro_batch_size, dp_size, dp_rank, seed)
"""
from mindspeed_ms.data.processor import Qwen2VLImageProcessor, smart_resize

_LAZY = {
    "build_datasets": "dataset", "MultimodalDataset": "dataset", "StreamingMultimodalDataset": "dataset",
    "DataError": "dataset", "Qwen2VLCollator": "collator", "Qwen2VLDPOCollator": "collator",
    "build_collator": "collator", "loss_weights_for_mode": "collator", "StatefulDistributedSampler": "sampler",
    "StreamingShardSampler": "sampler", "LengthGroupedSampler": "sampler", "BucketBatchSampler": "sampler",
    "build_sampler": "sampler", "Qwen2VLTemplate": "template", "get_template": "template",
    "load_tokenizer": "tokenizer", "Qwen2VLProcessor": "hf_processor",
}
__all__ = ["Qwen2VLImageProcessor", "smart_resize", *_LAZY]


def __getattr__(name):
    # Heavier modules (HF datasets, transformers) load on first use only.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mindspeed_ms.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
