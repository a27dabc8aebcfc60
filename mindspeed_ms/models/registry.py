"""The model families, registered in one place.

A family is one model architecture with its MindSpeed-MM names: model.json `model_id`, HF
`config.json` `model_type`, the `mm-convert` converter name, and where its pieces live. Everything
that depends on the family (config loading, `models.from_pretrained`, training's model and batch
construction, `mm-convert`, parameter shapes) looks it up here instead of naming a family.

Pieces are given as "module:attribute" strings and imported on first use, so looking a family up
(e.g. in the data or config packages) never imports MindSpore.

To add a family (docs/architecture.md, "Adding a model family"): write its config classes, Cells,
host-side batch functions and checkpoint scheme, then add one `Family(...)` to `FAMILIES`.
"""
import importlib
from dataclasses import dataclass, field


class UnknownFamilyError(ValueError):
    """No registered family has this model_id / model_type / converter name."""


@dataclass(frozen=True)
class Family:
    name: str               # folder under mindspeed_ms/models/
    model_id: str           # model.json top-level "model_id"
    hf_model_type: str      # HF config.json "model_type"
    converter: str          # mm-convert subcommand (MindSpeed-MM's converter class name)
    display: str            # for messages
    # "module:attribute" of each piece
    pieces: dict = field(default_factory=dict, compare=False, hash=False)

    def load(self, piece):
        """Import and return a piece: model_class, config_schema, config_from_hf, config_to_hf,
        batch (host-side vision inputs + rope index), checkpoint_scheme."""
        module, _, attr = self.pieces[piece].partition(":")
        return getattr(importlib.import_module(module), attr)

    def config_schema(self):
        return self.load("config_schema")

    def model_class(self):
        return self.load("model_class")

    def checkpoint_scheme(self):
        return self.load("checkpoint_scheme")

    def batch(self):
        return self.load("batch")


FAMILIES = (
    Family("qwen2vl", "qwen2vl", "qwen2_vl", "Qwen2VLConverter", "Qwen2-VL", {
        "config_schema": "mindspeed_ms.config.model_config:QWEN2VL_SCHEMA",
        "config_from_hf": "mindspeed_ms.config.model_config:config_from_hf",
        "config_to_hf": "mindspeed_ms.config.model_config:config_to_hf",
        "model_class": "mindspeed_ms.models.qwen2vl.model:Qwen2VLForConditionalGeneration",
        "batch": "mindspeed_ms.models.qwen2vl.batch:QWEN2VL_BATCH",
        "checkpoint_scheme": "mindspeed_ms.checkpoint.names:QWEN2VL_SCHEME",
    }),
    Family("qwen2_5vl", "qwen2_5vl", "qwen2_5_vl", "Qwen2_5_VLConverter", "Qwen2.5-VL", {
        "config_schema": "mindspeed_ms.config.qwen2_5vl_config:QWEN2_5VL_SCHEMA",
        "config_from_hf": "mindspeed_ms.config.qwen2_5vl_config:config_from_hf",
        "config_to_hf": "mindspeed_ms.config.qwen2_5vl_config:config_to_hf",
        "model_class": "mindspeed_ms.models.qwen2_5vl.model:Qwen2_5_VLForConditionalGeneration",
        "batch": "mindspeed_ms.models.qwen2_5vl.batch:QWEN2_5VL_BATCH",
        "checkpoint_scheme": "mindspeed_ms.checkpoint.qwen2_5vl_names:QWEN2_5VL_SCHEME",
    }),
)


def _find(attr, value, what, where):
    for fam in FAMILIES:
        if getattr(fam, attr) == value:
            return fam
    known = ", ".join(repr(getattr(f, attr)) for f in FAMILIES)
    prefix = f"{where}: " if where else ""
    raise UnknownFamilyError(f"{prefix}{what} '{value}' is not a model family this framework builds; known: {known}")


def family_for_model_id(model_id, where=""):
    """The family of a model.json `model_id` ("qwen2vl", "qwen2_5vl")."""
    from mindspeed_ms.config.model_config import ModelConfigError
    try:
        return _find("model_id", model_id, "model_id", where)
    except UnknownFamilyError as e:
        raise ModelConfigError(str(e)) from None


def family_for_hf_model_type(model_type, where=""):
    """The family of an HF config.json `model_type` ("qwen2_vl", "qwen2_5_vl")."""
    from mindspeed_ms.config.model_config import ModelConfigError
    try:
        return _find("hf_model_type", model_type, "model_type", where)
    except UnknownFamilyError as e:
        raise ModelConfigError(str(e)) from None


def family_for_converter(name):
    return _find("converter", name, "converter", "")


def family_of(cfg):
    """The family of a loaded model config (its `model_id`)."""
    return family_for_model_id(cfg.model_id, getattr(cfg, "source", ""))


def family_of_hf_config(hf_config: dict):
    """The family of an HF config.json dict (default Qwen2-VL when model_type is absent)."""
    return family_for_hf_model_type(hf_config.get("model_type", "qwen2_vl"))
