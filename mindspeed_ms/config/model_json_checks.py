"""model.json keys that are missing or out of range, checked at start-up (before the model is built).

What MindSpeed-MM does with a missing key decides what we do (its `get_model_config` copies only the
keys present in the json into Megatron's TransformerConfig; the model code reads the others from
the json object itself):
* structure keys with no usable default there (TransformerConfig's 0 for num_layers / hidden_size /
  num_attention_heads, an AttributeError for patch_size, vocab_size ...) are refused: a defaulted
  value would train a different model than the file describes (a checkpoint may still load);
* keys we default (the Qwen2-VL value) are announced in a start-up notice naming the value used,
  since MindSpeed-MM would take Megatron's default there (e.g. layernorm_epsilon 1e-5, dropout 0.1).
Derived keys (kv_channels, ffn_hidden_size = 4 x hidden, num_query_groups) follow MindSpeed-MM's
own rule and need no notice.
"""
from __future__ import annotations

import json
from typing import List

VISION = "image_encoder.vision_encoder"
PROJECTOR = "image_encoder.vision_projector"
TEXT = "text_decoder"

REQUIRED = {
    VISION: ("num_layers", "hidden_size", "num_attention_heads", "patch_size", "spatial_merge_size",
             "in_channels", "temporal_patch_size"),
    TEXT: ("num_layers", "hidden_size", "num_attention_heads", "vocab_size"),
}
DEFAULTED = {
    VISION: ("layernorm_epsilon", "hidden_dropout", "attention_dropout", "activation_func"),
    PROJECTOR: ("input_size", "hidden_size", "ffn_hidden_size", "layernorm_epsilon", "activation_func"),
    TEXT: ("layernorm_epsilon", "rope_theta", "mrope_section", "hidden_dropout", "attention_dropout",
           "untie_embeddings_and_output_weights", "max_position_embeddings", "activation_func"),
}
TOKEN_KEYS = ("img_context_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


# Bounds that no real model reaches; beyond them a value is a typo (and would hang or exhaust memory
# while the model is laid out): layer counts, and sizes that must index int32 tensor dimensions.
MAX_LAYERS = 10000
MAX_SIZE = 2 ** 31 - 1


def _is_size(key: str) -> bool:
    return key.endswith(("_size", "_channels", "num_layers")) or key.startswith("num_")


class ModelJsonError(ValueError):
    """model.json lacks a structure key or holds a value outside its range (names file and key)."""


def _section(data, name):
    node = data
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_model_json(path: str, model=None) -> List[str]:
    """Raise ModelJsonError for a missing structure key or a bad value; return notices for defaulted
    keys. `model` is the loaded Qwen2VLConfig (for the values used), optional."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelJsonError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        return []          # the loader reports the shape error
    used = {}
    if model is not None:
        used = {VISION: model.vision, PROJECTOR: model.projector, TEXT: model.text}
    notices = []
    for name, keys in REQUIRED.items():
        sec = _section(data, name)
        if sec is None:
            continue
        missing = [k for k in keys if k not in sec]
        if missing:
            raise ModelJsonError(f"{path}: {name} has no {', '.join(missing)}: MindSpeed-MM has no default for "
                                 f"{'it' if len(missing) == 1 else 'them'} either; add the value(s) of the "
                                 f"checkpoint's config.json")
    for name, keys in DEFAULTED.items():
        sec = _section(data, name)
        if sec is None:
            continue
        for k in keys:
            if k not in sec:
                value = getattr(used.get(name), k, None)
                shown = f" {value!r}" if value is not None else " the derived value"
                notices.append(f"{path} has no {name}.{k}; using{shown} (Qwen2-VL's value; MindSpeed-MM would "
                               f"take Megatron's default): add the key to make it explicit")
    for name in (VISION, PROJECTOR, TEXT):
        sec = _section(data, name) or {}
        eps = sec.get("layernorm_epsilon")
        if _num(eps) and not eps > 0:
            raise ModelJsonError(f"{path}: {name}.layernorm_epsilon is {eps}; it must be positive (e.g. 1e-6): "
                                 f"the norms divide by sqrt(variance + epsilon)")
        for k in ("hidden_dropout", "attention_dropout"):
            v = sec.get(k)
            if _num(v) and not 0 <= v < 1:
                raise ModelJsonError(f"{path}: {name}.{k} is {v}; a dropout probability is in [0, 1)")
        for k, v in sec.items():
            if not (isinstance(v, int) and not isinstance(v, bool)) or not _is_size(k):
                continue
            low = 0 if k in ("num_layers", "recompute_num_layers") else 1
            high = MAX_LAYERS if k.endswith("num_layers") else MAX_SIZE
            if not low <= v <= high:
                raise ModelJsonError(f"{path}: {name}.{k} is {v}; it must be in [{low}, {high}] (a size or count "
                                     f"of a real model)")
    text = _section(data, TEXT) or {}
    vocab = text.get("vocab_size")
    if isinstance(vocab, int) and vocab > 0:
        for k in TOKEN_KEYS:
            tid = data.get(k)
            if isinstance(tid, int) and not isinstance(tid, bool) and not 0 <= tid < vocab:
                raise ModelJsonError(f"{path}: {k} {tid} is outside text_decoder.vocab_size {vocab}: the embedding "
                                     f"table has rows 0..{vocab - 1}; fix vocab_size (the checkpoint's) or the id")
    return notices
