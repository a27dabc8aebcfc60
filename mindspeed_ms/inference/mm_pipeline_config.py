"""MindSpeed-MM's inference_*.json / evaluate_*.json (the `--mm-model` of inference_vlm.py and
evaluate_vlm.py) -> the model structure, tokenizer, generation settings and task keys.

The model sections (`image_encoder`, `text_decoder`, `img_context_token_id`, ...) are a model.json
and go through the same checks as training; the keys that only these files carry are read here.
Paths are relative to the working directory, as in MindSpeed-MM (its scripts run from the
repository root). Every key is either used as MindSpeed-MM uses it or listed in `notices`.
"""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

from mindspeed_ms.inference.generation_settings import GenerationConfigError, read_generation_config

PIPELINES = ("Qwen2VlPipeline",)
EVALUATION_MODELS = ("qwen2_vl_7b",)     # MindSpeed-MM's eval_pipeline_dict entries that are Qwen2VlPipeline
MODEL_KEYS = ("image_encoder", "text_decoder", "text_encoder", "video_encoder", "img_context_token_id",
              "video_token_id", "vision_start_token_id", "vision_end_token_id")
TASK_KEYS = {
    "pipeline_class", "model_id", "dtype", "device", "tokenizer", "generation_config", "patch", "min_pixels",
    "max_pixels", "image_path", "prompts", "image_processer_path", "dataset_path", "evaluation_dataset",
    "evaluation_model", "result_output_path", "use_custom_prompt",
}
# text_decoder keys only the inference files carry (MindSpeed-MM's inference model reads them)
_DECODER_EXTRA = ("use_infer_fa", "is_encoder_decoder", "tokenizer_type", "sequence_parallel",
                  "tensor_model_parallel_size", "pipeline_model_parallel_size")


class PipelineConfigError(ValueError):
    pass


@dataclass
class PipelineConfig:
    path: str
    model: object                        # Qwen2VLConfig
    tokenizer_dir: str
    generation: object                   # GenerationSettings
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    image_path: Optional[str] = None
    prompts: Optional[str] = None
    dataset_path: Optional[str] = None
    evaluation_dataset: Optional[str] = None
    evaluation_model: Optional[str] = None
    result_output_path: Optional[str] = None
    use_custom_prompt: bool = True
    device: Optional[str] = None
    decoder_parallel: dict = field(default_factory=dict)
    notices: List[str] = field(default_factory=list)


def _err(path, msg):
    raise PipelineConfigError(f"--mm-model {path}: {msg}")


def _split_model_sections(data, path, pp, notices):
    """The model.json part, without the inference-only decoder keys (read here) and, with one
    pipeline stage, without `pipeline_num_layers` (MindSpeed-MM ignores it unless PP > 1)."""
    from mindspeed_ms.config.model_config import TextDecoderConfig

    model = {k: json.loads(json.dumps(data[k])) for k in MODEL_KEYS if k in data}
    td = model.get("text_decoder")
    extra = {}
    if isinstance(td, dict):
        known = {f.name for f in dataclasses.fields(TextDecoderConfig)}
        for k in _DECODER_EXTRA:
            if k in td and k not in known:
                extra[k] = td.pop(k)
        if pp == 1:
            for sec in (td, (model.get("image_encoder") or {}).get("vision_encoder")):
                if isinstance(sec, dict) and sec.get("pipeline_num_layers") not in (None, [sec.get("num_layers")]):
                    notices.append(f"pipeline_num_layers {sec['pipeline_num_layers']} is for a pipeline of "
                                   f"{len(sec['pipeline_num_layers'])} stages; with --pipeline-model-parallel-size 1 "
                                   f"the whole model runs on one device (as in MindSpeed-MM)")
                    sec.pop("pipeline_num_layers")
    if extra.get("is_encoder_decoder"):
        _err(path, "text_decoder.is_encoder_decoder is true; Qwen2-VL's text decoder is decoder-only (set false)")
    if extra.get("tokenizer_type", "PretrainedFromHF") != "PretrainedFromHF":
        _err(path, f"text_decoder.tokenizer_type {extra['tokenizer_type']!r}: only 'PretrainedFromHF' (the "
                   f"tokenizer of tokenizer.from_pretrained) is supported")
    if extra.get("use_infer_fa"):
        notices.append("text_decoder.use_infer_fa: flash attention for generation is an Ascend kernel option; "
                       "generation here uses plain attention (same result)")
    if extra.get("sequence_parallel"):
        notices.append("text_decoder.sequence_parallel: no effect on one device")
    return model, {k: extra[k] for k in ("tensor_model_parallel_size", "pipeline_model_parallel_size") if k in extra}


def _tokenizer_dir(tok, path):
    if not isinstance(tok, dict):
        _err(path, "'tokenizer' must be an object with hub_backend, autotokenizer_name, from_pretrained")
    for k in tok:
        if k not in ("hub_backend", "autotokenizer_name", "from_pretrained"):
            _err(path, f"unknown key 'tokenizer.{k}'; known: hub_backend, autotokenizer_name, from_pretrained")
    if tok.get("hub_backend", "hf") != "hf":
        _err(path, f"tokenizer.hub_backend {tok['hub_backend']!r}: only 'hf' (a local HF directory) is supported")
    if tok.get("autotokenizer_name", "AutoTokenizer") != "AutoTokenizer":
        _err(path, f"tokenizer.autotokenizer_name {tok['autotokenizer_name']!r}: only 'AutoTokenizer' is supported")
    d = tok.get("from_pretrained")
    if not d or not os.path.isdir(d):
        _err(path, f"tokenizer.from_pretrained {d!r}: no such directory; point it at the HF model directory with "
                   f"the tokenizer and preprocessor_config.json (e.g. ckpt/hf_path/Qwen2-VL-7B-Instruct)")
    return d


def _pixels(data, key, path):
    v = data.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        _err(path, f"{key} must be a positive number of pixels, got {v!r}")
    return v


def read_pipeline_json(path, task, pp=1, backend="CPU"):
    """`task`: "inference" or "evaluation". Returns a PipelineConfig; raises PipelineConfigError."""
    from mindspeed_ms.config.model_config import ModelConfigError, model_config_from_dict

    if not path or not os.path.isfile(path):
        raise PipelineConfigError(f"--mm-model {path}: no such file (MindSpeed-MM's inference_*.json or "
                                  f"evaluate_*.json); run from the repository root or give an absolute path")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise PipelineConfigError(f"--mm-model {path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        _err(path, "the top level must be a JSON object")
    for k in data:
        if k not in TASK_KEYS and k not in MODEL_KEYS:
            _err(path, f"unknown key '{k}'; known: {', '.join(sorted(TASK_KEYS | set(MODEL_KEYS)))}")
    notices = []
    cls_key = "pipeline_class" if task == "inference" else "model_id"
    cls = data.get("pipeline_class", data.get("model_id"))
    if task == "inference" and cls is None:
        _err(path, "pipeline_class is missing (Qwen2VlPipeline)")
    if cls is not None and cls not in PIPELINES:
        _err(path, f"{cls_key} {cls!r}: this framework runs {', '.join(PIPELINES)}")
    model_part, dec_par = _split_model_sections(data, path, pp, notices)
    try:
        model = model_config_from_dict(model_part, path)
    except (ModelConfigError, ValueError) as e:
        raise PipelineConfigError(f"--mm-model {e}") from None
    try:
        gen = read_generation_config(data.get("generation_config", {}), path)
    except GenerationConfigError as e:
        raise PipelineConfigError(f"--mm-model {e}") from None
    for k, v in gen.vision_token_ids.items():
        want = {"image_token_id": model.image_token_id, "video_token_id": getattr(model, "video_token_id", None),
                "vision_start_token_id": getattr(model, "vision_start_token_id", None)}[k]
        if want is not None and v != want:
            _err(path, f"generation_config.{k} = {v} but the model uses {want} (img_context_token_id / model "
                       f"token ids); make them equal")
    notices += gen.notices
    dtype = data.get("dtype", "fp32")
    if dtype not in ("bf16", "fp16", "fp32"):
        _err(path, f"dtype {dtype!r}: expected bf16, fp16 or fp32")
    if dtype != "fp32":
        notices.append(f"dtype {dtype}: generation runs in fp32 here")
    device = data.get("device")
    if device not in (None, "npu", "cpu", "cuda"):
        _err(path, f"device {device!r}: expected npu or cpu")
    if device == "npu" and backend != "Ascend":
        notices.append("device npu: no Ascend device here, running on CPU")
    patch = data.get("patch") or {}
    if not isinstance(patch, dict) or any(k != "infer_fa" for k in patch):
        _err(path, f"patch {patch!r}: the only patch of the Qwen2-VL files is {{\"infer_fa\": true}}")
    if patch.get("infer_fa"):
        notices.append("patch.infer_fa: the Ascend flash-attention patch for generation has no effect here")
    if data.get("image_processer_path"):
        notices.append("image_processer_path: not read (MindSpeed-MM does not read it either; the processor comes "
                       "from tokenizer.from_pretrained)")
    cfg = PipelineConfig(path=path, model=model, tokenizer_dir=_tokenizer_dir(data.get("tokenizer"), path),
                         generation=gen, min_pixels=_pixels(data, "min_pixels", path),
                         max_pixels=_pixels(data, "max_pixels", path), device=device, decoder_parallel=dec_par,
                         notices=notices)
    if task == "inference":
        cfg.image_path, cfg.prompts = data.get("image_path"), data.get("prompts")
        if not cfg.prompts or not isinstance(cfg.prompts, str):
            _err(path, "prompts must be the question text")
        if cfg.image_path is not None and not os.path.isfile(cfg.image_path):
            _err(path, f"image_path {cfg.image_path}: no such file")
        if cfg.min_pixels or cfg.max_pixels:
            notices.append("min_pixels/max_pixels: used by evaluation only (MindSpeed-MM's inference resizes "
                           "image_path with qwen-vl-utils' defaults, and so does this one)")
        for k in ("dataset_path", "evaluation_dataset", "evaluation_model", "result_output_path"):
            if k in data:
                notices.append(f"{k}: an evaluation key, not read by inference_vlm.py")
    else:
        from mindspeed_ms.inference.benchmarks.datasets import DATASET_TYPES

        for k in ("dataset_path", "evaluation_dataset", "evaluation_model", "result_output_path"):
            if not data.get(k) or not isinstance(data[k], str):
                _err(path, f"{k} is missing (evaluate_vlm.py needs dataset_path, evaluation_dataset, "
                           f"evaluation_model, result_output_path)")
        cfg.dataset_path, cfg.evaluation_dataset = data["dataset_path"], data["evaluation_dataset"]
        cfg.evaluation_model, cfg.result_output_path = data["evaluation_model"], data["result_output_path"]
        cfg.use_custom_prompt = bool(data.get("use_custom_prompt", True))
        if cfg.evaluation_dataset not in DATASET_TYPES:
            _err(path, f"evaluation_dataset {cfg.evaluation_dataset!r}: supported are {', '.join(DATASET_TYPES)}")
        if cfg.evaluation_model not in EVALUATION_MODELS:
            _err(path, f"evaluation_model {cfg.evaluation_model!r}: supported is {', '.join(EVALUATION_MODELS)} "
                       f"(Qwen2VlPipeline; MindSpeed-MM's internvl2_8b is another model)")
        if not os.path.isfile(cfg.dataset_path):
            _err(path, f"dataset_path {cfg.dataset_path}: no such file (a VLMEvalKit TSV, e.g. AI2D_TEST.tsv)")
        for k in ("image_path", "prompts"):
            if k in data:
                notices.append(f"{k}: an inference key, not read by evaluate_vlm.py")
    return cfg
