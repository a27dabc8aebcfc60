"""data_*.json (MindSpeed-MM `dataset_param` / `dataloader_param`) -> validated dataclasses.

Every key MindSpeed-MM reads is accepted with its default; any other key is an error that names the
key and the file (a misspelt key must not be silently ignored). `cutoff_len` is refused: the
sequence cutoff is `--seq-length`.
"""
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Optional


class DataConfigError(ValueError):
    """A data.json that cannot be used; the message names the file and the key."""


@dataclass
class PreprocessParameters:
    model_name_or_path: Optional[str] = None
    use_fast_tokenizer: bool = True
    split_special_tokens: bool = False
    image_resolution: int = 512  # accepted for compatibility; qwen2vl uses the pixel limits below
    video_resolution: int = 128
    image_max_pixels: int = 768 * 768
    image_min_pixels: int = 32 * 32
    video_max_pixels: int = 256 * 256
    video_min_pixels: int = 16 * 16
    video_fps: float = 2.0
    video_maxlen: int = 128
    image_do_pan_and_scan: bool = False
    crop_to_patches: bool = False
    use_audio_in_video: bool = False
    audio_sampling_rate: int = 16000


@dataclass
class BasicParameters:
    template: str = "qwen2vl"
    dataset_dir: str = "data"
    dataset: Optional[str] = None
    cache_dir: Optional[str] = None
    train_on_prompt: bool = False
    mask_history: bool = False
    streaming: bool = False
    overwrite_cache: bool = False
    preprocessing_batch_size: int = 1000
    preprocessing_num_workers: Optional[int] = None
    max_samples: Optional[int] = None
    tool_format: Optional[str] = None
    val_dataset: Optional[str] = None
    val_max_samples: Optional[int] = None
    val_rate: Optional[float] = None
    packing: Optional[bool] = None
    neat_packing: bool = False
    preprocess_on_fly: bool = False
    enable_thinking: bool = True


@dataclass
class DatasetAttr:
    ranking: bool = False
    packing: bool = False       # MindSpeed-MM 26.0.0's packing switch for supervised data (data.packing)
    formatting: str = "sharegpt"
    system: Optional[str] = None
    images: Optional[str] = None
    videos: Optional[str] = None
    audios: Optional[str] = None
    messages: Optional[str] = "conversations"
    role_tag: Optional[str] = "from"
    content_tag: Optional[str] = "value"
    user_tag: Optional[str] = "human"
    assistant_tag: Optional[str] = "gpt"
    observation_tag: Optional[str] = "observation"
    function_tag: Optional[str] = "function_call"
    system_tag: Optional[str] = "system"
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    # alpaca columns
    prompt: Optional[str] = "instruction"
    query: Optional[str] = "input"
    response: Optional[str] = "output"
    history: Optional[str] = None


@dataclass
class CollateParam:
    model_name: str = "qwen2vl"
    ignore_pad_token_for_loss: bool = True
    pad_to_multiple_of: int = 8


@dataclass
class DataloaderParam:
    dataloader_mode: str = "sampler"
    drop_last: bool = True
    sampler_type: str = "BaseRandomBatchSampler"
    collate_param: CollateParam = field(default_factory=CollateParam)
    pin_memory: bool = True
    shuffle: bool = True
    # These come from --micro-batch-size / --num-workers / --seed; accepted here too.
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    seed: Optional[int] = None
    prefetch_factor: Optional[int] = None
    persistent_workers: bool = False
    group_by_length: bool = False


@dataclass
class DataConfig:
    preprocess_parameters: PreprocessParameters
    basic_parameters: BasicParameters
    attr: DatasetAttr
    dataloader_param: DataloaderParam
    dataset_type: str = "huggingface"
    path: Optional[str] = None  # the data.json this came from (for messages)
    present: frozenset = frozenset()  # dotted keys the file has ("dataset_param.basic_parameters.packing")

    @property
    def datasets(self):
        return split_dataset_list(self.basic_parameters.dataset)

    @property
    def val_datasets(self):
        return split_dataset_list(self.basic_parameters.val_dataset)


TEMPLATES = ("qwen2vl", "qwen2_vl")
COLLATORS = ("qwen2vl", "qwen2vl_dpo")
SAMPLERS = ("stateful_distributed_sampler", "BaseRandomBatchSampler", "LengthGroupedSampler",
            "BucketBatchSampler", "SequentialSampler")
DATALOADER_MODES = ("base", "sampler", "variable")
# the sampler types that group by sample length (they need the preprocessed lengths)
LENGTH_SAMPLERS = ("LengthGroupedSampler", "BucketBatchSampler")


def split_dataset_list(value):
    """`a.json,b.json` -> ["a.json", "b.json"] (MindSpeed-MM: comma separated, no spaces needed)."""
    if not value:
        return []
    return [v.strip() for v in str(value).split(",") if v.strip()]


_EXPECTED_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _check_type(cls, name, value, where):
    hint = {f.name: f.type for f in dataclasses.fields(cls)}[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if not optional:
            raise DataConfigError(f"{where}.{name} must not be null")
        return
    ok = _EXPECTED_TYPES.get(base)
    if ok and (not isinstance(value, ok) or (base is not bool and isinstance(value, bool))):
        raise DataConfigError(f"{where}.{name}: expected {base.__name__}, got {type(value).__name__} {value!r}")


def _build(cls, obj, where, nested=None):
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise DataConfigError(f"{where} must be a JSON object, got {type(obj).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in obj.items():
        if key == "cutoff_len":
            raise DataConfigError(f"{where}.cutoff_len is not supported: the sequence cutoff is --seq-length; "
                                  f"remove cutoff_len from the file and pass --seq-length {value}")
        if key not in names:
            raise DataConfigError(f"{where}: unknown key {key!r} (known keys: {', '.join(sorted(names))})")
        if nested and key in nested:
            kwargs[key] = _build(nested[key], value, f"{where}.{key}")
            continue
        _check_type(cls, key, value, where)
        kwargs[key] = value
    return cls(**kwargs)


def parse_data_config(obj, path="<data.json>"):
    """Validate a parsed data.json dict. Errors name `path` and the offending key."""
    try:
        if not isinstance(obj, dict):
            raise DataConfigError("the top level must be a JSON object with dataset_param and dataloader_param")
        unknown = set(obj) - {"dataset_param", "dataloader_param"}
        if unknown:
            raise DataConfigError(f"unknown top-level key {sorted(unknown)[0]!r} (known: dataset_param, dataloader_param)")
        if "dataset_param" not in obj:
            raise DataConfigError("missing dataset_param")
        dp = obj["dataset_param"]
        if not isinstance(dp, dict):
            raise DataConfigError("dataset_param must be a JSON object")
        known = {"dataset_type", "preprocess_parameters", "basic_parameters", "attr"}
        for key in dp:
            if key == "cutoff_len":
                _build(BasicParameters, {"cutoff_len": dp[key]}, "dataset_param")
            if key not in known:
                raise DataConfigError(f"dataset_param: unknown key {key!r} (known keys: {', '.join(sorted(known))})")
        cfg = DataConfig(
            preprocess_parameters=_build(PreprocessParameters, dp.get("preprocess_parameters"),
                                         "dataset_param.preprocess_parameters"),
            basic_parameters=_build(BasicParameters, dp.get("basic_parameters"), "dataset_param.basic_parameters"),
            attr=_build(DatasetAttr, dp.get("attr"), "dataset_param.attr"),
            dataloader_param=_build(DataloaderParam, obj.get("dataloader_param"), "dataloader_param",
                                    nested={"collate_param": CollateParam}),
            dataset_type=dp.get("dataset_type", "huggingface"),
            path=path,
            present=frozenset(_dotted(obj)),
        )
        _resolution_as_max_pixels(cfg)
        _check_values(cfg)
    except DataConfigError as e:
        raise DataConfigError(f"{path}: {e}") from None
    return cfg


def _dotted(obj, prefix=""):
    for k, v in obj.items():
        if isinstance(v, dict):
            yield from _dotted(v, f"{prefix}{k}.")
        yield prefix + k


# Keys accepted (MindSpeed-MM's files carry them) that do nothing here: dotted key -> (applies(value,
# present keys), why). `applies` says when the notice is due (a value that asks for what we do anyway
# is not a difference).
_ALWAYS = lambda v, present: True  # noqa: E731
_TRUE = lambda v, present: bool(v)  # noqa: E731
_SET = lambda v, present: v is not None  # noqa: E731
_PRE = "dataset_param.preprocess_parameters."
NO_EFFECT_KEYS = {
    # 2.0.0's name for the pixel cap (its plugin downsizes images above it): read as image_max_pixels
    # when the file has no image_max_pixels, ignored beside it (as 2.1.0+ ignore it)
    _PRE + "image_resolution": (lambda v, present: _PRE + "image_max_pixels" in present,
                                "image_max_pixels is given and sets the pixel cap, as in MindSpeed-MM 2.1.0+"),
    _PRE + "video_resolution": (lambda v, present: _PRE + "video_max_pixels" in present,
                                "video_max_pixels is given and sets the pixel cap, as in MindSpeed-MM 2.1.0+"),
    "dataset_param.preprocess_parameters.image_do_pan_and_scan": (
        _TRUE, "pan-and-scan crops belong to Gemma-3's image plugin; Qwen2-VL has none"),
    "dataset_param.preprocess_parameters.crop_to_patches": (
        _TRUE, "tiling into patches belongs to other models' plugins; Qwen2-VL resizes whole images"),
    "dataset_param.preprocess_parameters.use_audio_in_video": (_TRUE, "Qwen2-VL has no audio input"),
    "dataset_param.preprocess_parameters.audio_sampling_rate": (_ALWAYS, "Qwen2-VL has no audio input"),
    "dataset_param.attr.audios": (_SET, "Qwen2-VL has no audio input; the column is not read"),
    "dataset_param.basic_parameters.preprocessing_batch_size": (
        _ALWAYS, "samples are preprocessed one at a time by an unbatched datasets.map; the result is the same"),
    "dataset_param.basic_parameters.preprocess_on_fly": (
        _TRUE, "samples are preprocessed once before training (and cached with cache_dir); the samples are the same"),
    "dataset_param.basic_parameters.enable_thinking": (
        _ALWAYS, "the qwen2vl template has no thinking block (as in MindSpeed-MM)"),
    "dataset_param.basic_parameters.tool_format": (
        _SET, "the qwen2vl template's own function/observation slots format tool turns"),
    "dataloader_param.dataloader_mode": (
        lambda v, present: v != "sampler", "batches always come from the Megatron-order sampler ('sampler' mode)"),
    "dataloader_param.pin_memory": (_ALWAYS, "there is no torch DataLoader; batches go from numpy to MindSpore"),
    "dataloader_param.group_by_length": (
        _TRUE, "MindSpeed-MM's qwen2vl loader does not read it either; use sampler_type LengthGroupedSampler"),
    "dataloader_param.batch_size": (_ALWAYS, "taken from --micro-batch-size, as MindSpeed-MM does"),
    "dataloader_param.seed": (_ALWAYS, "taken from --seed, as MindSpeed-MM does"),
    "dataloader_param.num_workers": (_ALWAYS, "taken from --num-workers, as MindSpeed-MM does"),
    "dataloader_param.persistent_workers": (
        _ALWAYS, "the background loading threads (--num-workers) live for the whole run"),
}


def no_effect_notices(cfg):
    """One start-up line per key of the file that has no effect here (with the reason)."""
    out = []
    for key, (applies, why) in NO_EFFECT_KEYS.items():
        if key not in cfg.present:
            continue
        obj = cfg
        for part in key.split(".")[1:] if key.startswith("dataset_param.") else key.split("."):
            obj = getattr(obj, part)
        if applies(obj, cfg.present):
            out.append(f"{cfg.path}: {key} = {json.dumps(obj)} has no effect here ({why})")
    return out


def _resolution_as_max_pixels(cfg):
    """MindSpeed-MM 2.0.0's image_resolution / video_resolution: the pixel cap, later image_max_pixels /
    video_max_pixels; a 2.0.0 file keeps its cap."""
    p = cfg.preprocess_parameters
    for kind in ("image", "video"):
        if _PRE + f"{kind}_resolution" in cfg.present and _PRE + f"{kind}_max_pixels" not in cfg.present:
            setattr(p, f"{kind}_max_pixels", getattr(p, f"{kind}_resolution"))


def _check_values(cfg):
    b, a, d, p = cfg.basic_parameters, cfg.attr, cfg.dataloader_param, cfg.preprocess_parameters
    if cfg.dataset_type != "huggingface":
        raise DataConfigError(f"dataset_param.dataset_type {cfg.dataset_type!r}: only 'huggingface' is a qwen2vl dataset type")
    if b.template not in TEMPLATES:
        raise DataConfigError(f"basic_parameters.template {b.template!r}: known templates are {', '.join(TEMPLATES)}")
    if not b.dataset:
        raise DataConfigError("basic_parameters.dataset is empty: give one or more JSON files separated by commas")
    if a.formatting not in ("sharegpt", "alpaca"):
        raise DataConfigError(f"attr.formatting {a.formatting!r}: use 'sharegpt' or 'alpaca'")
    if a.ranking and not (a.chosen and a.rejected):
        raise DataConfigError("attr.ranking is true: attr.chosen and attr.rejected must name the two response columns")
    if d.collate_param.model_name not in COLLATORS:
        raise DataConfigError(f"dataloader_param.collate_param.model_name {d.collate_param.model_name!r}: "
                              f"known collators are {', '.join(COLLATORS)}")
    if a.ranking != (d.collate_param.model_name == "qwen2vl_dpo"):
        raise DataConfigError("attr.ranking and collate_param.model_name disagree: ranking data needs the "
                              "'qwen2vl_dpo' collator and the 'qwen2vl_dpo' collator needs attr.ranking: true")
    if d.dataloader_mode not in DATALOADER_MODES:
        raise DataConfigError(f"dataloader_param.dataloader_mode {d.dataloader_mode!r}: MindSpeed-MM's modes are "
                              f"{', '.join(DATALOADER_MODES)}")
    if d.sampler_type not in SAMPLERS:
        raise DataConfigError(f"dataloader_param.sampler_type {d.sampler_type!r}: known samplers are {', '.join(SAMPLERS)}")
    if b.streaming and d.sampler_type in LENGTH_SAMPLERS:
        raise DataConfigError(f"dataloader_param.sampler_type {d.sampler_type} groups samples by length, which a "
                              f"stream cannot know before reading it: with streaming: true samples come in file "
                              f"order (use stateful_distributed_sampler), or set streaming: false")
    if b.val_rate is not None and not (0 < b.val_rate < 1 or (b.val_rate >= 1 and float(b.val_rate).is_integer())):
        raise DataConfigError(f"basic_parameters.val_rate {b.val_rate}: use a fraction in (0, 1) or a sample count")
    if b.val_rate and b.streaming:
        raise DataConfigError("basic_parameters.val_rate needs the whole dataset: it cannot be used with streaming; "
                              "give val_dataset instead")
    for name in ("max_samples", "val_max_samples"):
        v = getattr(b, name)
        if v is not None and v <= 0:
            raise DataConfigError(f"basic_parameters.{name} must be positive or null, got {v}")
    for kind in ("image", "video"):
        low, high = getattr(p, f"{kind}_min_pixels"), getattr(p, f"{kind}_max_pixels")
        if high <= 0 or not 0 <= low <= high:
            raise DataConfigError(f"preprocess_parameters.{kind}_min_pixels {low} / {kind}_max_pixels {high}: need "
                                  f"0 <= {kind}_min_pixels <= {kind}_max_pixels and {kind}_max_pixels > 0")
    if p.video_fps <= 0 or p.video_maxlen <= 0:
        raise DataConfigError("preprocess_parameters.video_fps and video_maxlen must be positive")


def load_data_json(path):
    """Read and validate a MindSpeed-MM data_*.json file."""
    if not os.path.isfile(path):
        raise DataConfigError(f"{path}: data config file not found")
    with open(path, encoding="utf-8") as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise DataConfigError(f"{path}: not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise DataConfigError(f"{path}: not UTF-8 text ({e}): save it as UTF-8 JSON") from None
    return parse_data_config(obj, path)
