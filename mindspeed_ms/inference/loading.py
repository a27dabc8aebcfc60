"""Load a model for generation from what a user has: an HF directory or a MindSpeed-MM checkpoint.

- HF directory (has `config.json`): `Qwen2VLForConditionalGeneration.from_pretrained`; tokenizer and
  `preprocessor_config.json` come from the same directory.
- MindSpeed-MM checkpoint root (has `latest_checkpointed_iteration.txt`: a training `--save` dir or an
  `mm-convert hf_to_mm` output, any TP/PP layout): weights of the latest iteration, or of
  `iteration` ("release" or a number); the architecture comes from `--mm-model` (the model.json the
  run used) because rank files carry weights only, and the tokenizer from `--tokenizer` or the
  `model_name_or_path` of `--mm-data`.
"""
import json
import os
from dataclasses import dataclass

from mindspeed_ms.checkpoint.layout import LATEST_FILE


@dataclass
class LoadedModel:
    model: object
    tokenizer_dir: str
    kind: str        # "hf" or "mm"
    tag: str         # "hf", "release" or the iteration number


class LoadError(ValueError):
    """--load / --mm-model / --tokenizer do not describe a loadable model (the message says what to pass)."""


def _is_mm_root(path):
    return os.path.isfile(os.path.join(path, LATEST_FILE))


def read_data_json_preprocess(mm_data):
    """`dataset_param.preprocess_parameters` of a data.json (tokenizer dir and pixel limits)."""
    try:
        with open(mm_data, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise LoadError(f"--mm-data {mm_data}: file not found") from None
    except json.JSONDecodeError as e:
        raise LoadError(f"--mm-data {mm_data}: not valid JSON: {e}") from None
    try:
        return dict(data["dataset_param"]["preprocess_parameters"])
    except (KeyError, TypeError):
        raise LoadError(f"--mm-data {mm_data}: no dataset_param.preprocess_parameters object") from None


def load_for_inference(load, mm_model=None, tokenizer=None, iteration=None, mm_data=None) -> LoadedModel:
    """The model (fp32, matmul attention) and the directory holding its tokenizer files."""
    from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration

    if not load or not os.path.isdir(load):
        raise LoadError(f"--load {load}: not a directory; pass an HF model directory (with config.json) or a "
                        f"MindSpeed-MM checkpoint directory (with latest_checkpointed_iteration.txt)")
    data_tok = read_data_json_preprocess(mm_data).get("model_name_or_path") if mm_data else None
    if os.path.isfile(os.path.join(load, "config.json")):
        if iteration is not None:
            raise LoadError(f"--iteration applies to MindSpeed-MM checkpoints; {load} is an HF directory")
        model = Qwen2VLForConditionalGeneration.from_pretrained(load)
        return LoadedModel(model, tokenizer or load, "hf", "hf")
    if not _is_mm_root(load):
        raise LoadError(f"--load {load}: neither an HF directory (no config.json) nor a MindSpeed-MM checkpoint "
                        f"(no latest_checkpointed_iteration.txt)")
    if not mm_model:
        raise LoadError(f"--load {load} is a MindSpeed-MM checkpoint, whose rank files hold weights only: pass "
                        f"--mm-model with the model.json it was trained/converted with")
    tok_dir = tokenizer or data_tok
    if not tok_dir:
        raise LoadError(f"--load {load} is a MindSpeed-MM checkpoint without tokenizer files: pass --tokenizer "
                        f"HF_DIR (or --mm-data data.json whose model_name_or_path holds them)")
    from mindspeed_ms.config.model_config import load_model_json

    from mindspeed_ms.models.qwen2vl.hf_api import read_generation_config

    model, tag = model_from_mm_checkpoint(load, load_model_json(mm_model), iteration, f"--mm-model {mm_model}")
    model.generation_config = read_generation_config(tok_dir)  # the HF dir's decoding defaults, if any
    return LoadedModel(model, tok_dir, "mm", tag)


def model_from_mm_checkpoint(load, cfg, iteration=None, model_source="--mm-model"):
    """(model, iteration tag) from a MindSpeed-MM checkpoint root and a model config (Qwen2VLConfig)."""
    from mindspeed_ms.checkpoint.mm_io import read_mm_checkpoint
    from mindspeed_ms.config.model_config import config_to_hf
    from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration

    tag = None if iteration is None else ("release" if str(iteration) == "release" else int(iteration))
    try:
        sd, reader = read_mm_checkpoint(load, tag, config_to_hf(cfg))
    except (OSError, ValueError) as e:
        raise LoadError(f"--load {load}: {e}") from None
    model = Qwen2VLForConditionalGeneration(cfg)
    try:
        model.load_mm_state_dict(sd)
    except ValueError as e:
        raise LoadError(f"--load {load} does not fit {model_source}: {e}") from None
    return model, str(reader.tag)
