"""Tokenizer loading: always from `preprocess_parameters.model_name_or_path`, as MindSpeed-MM does."""
import os


def load_tokenizer(model_name_or_path, use_fast=True, split_special_tokens=False):
    """An HF tokenizer from a local model directory (no hub access: the path must exist)."""
    if not model_name_or_path:
        raise ValueError("preprocess_parameters.model_name_or_path is empty: point it at the HF model directory "
                         "that holds tokenizer.json / tokenizer_config.json")
    if not os.path.isdir(model_name_or_path):
        raise FileNotFoundError(
            f"tokenizer directory {model_name_or_path} not found (preprocess_parameters.model_name_or_path); "
            f"to create Qwen2-VL tokenizer files offline run: python -m mindspeed_ms.tools.build_tokenizer DIR")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_name_or_path, use_fast=use_fast,
                                            split_special_tokens=split_special_tokens, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a tokenizer from {model_name_or_path}: {e}") from None
    return tok


def tokenizer_fingerprint(tokenizer):
    """A string that changes when the tokenizer's vocabulary or behaviour changes (for cache keys)."""
    import hashlib

    h = hashlib.sha256()
    h.update(tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer")
             else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr(getattr(tokenizer, "split_special_tokens", False)).encode())
    return h.hexdigest()[:16]
