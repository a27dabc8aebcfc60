"""Datasets from a MindSpeed-MM data.json: JSON loading, caching and streaming through HF `datasets`.

Preprocessing (cached) turns each record into token ids and labels: format alignment, media path
resolution (`dataset_dir`), image/video token counts (images fully decoded here, so a corrupt file
fails before training), placeholder expansion, template + truncation to `--seq-length`. Pixels are
produced later, per item, by `Qwen2VLImageProcessor` (cheap to redo, heavy to store).

Bad input: problems MindSpeed-MM skips (wrong role order, odd message count, image tokens longer
than the sequence) are skipped and counted in one warning at the end of preprocessing; everything
else (missing/corrupt media, tag/media count mismatch, truncated JSON) raises `DataError` naming the
dataset file and the sample index.
"""
import hashlib
import json
import logging
import os

import numpy as np

from mindspeed_ms.data.formats import BrokenSample, align_example
from mindspeed_ms.data.image_io import MediaError, load_image, pre_resize, regularize_video, sampled_fps
from mindspeed_ms.data.processor import Qwen2VLImageProcessor, smart_resize
from mindspeed_ms.data.template import SkipSample, expand_vision_placeholders, get_template
from mindspeed_ms.data.tokenizer import load_tokenizer, tokenizer_fingerprint

logger = logging.getLogger(__name__)

# Bump when preprocessing output changes, so old caches are not reused.
PREPROCESS_VERSION = "2"
_EMPTY_ROW = {"input_ids": [], "labels": [], "rejected_input_ids": [], "rejected_labels": [], "images": [],
              "videos": [], "image_tokens": [], "video_tokens": [], "skip": "", "error": "", "source": "", "index": 0}


class DataError(ValueError):
    """Unusable input data; the message names the dataset file and sample index."""


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# transformers' Qwen2VLVideoProcessor.size: its pixel limits when its config file sets none
VIDEO_PROCESSOR_PIXELS = (128 * 28 * 28, 28 * 28 * 768)
VIDEO_CONFIG_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


def _video_pixel_limits(path):
    """(min, max) pixels of the video processor that MindSpeed-MM's `AutoProcessor` builds for `path`
    (transformers 4.57): the first of VIDEO_CONFIG_FILES present; its `min_pixels` / `max_pixels`,
    else its `size`, else the video processor's own defaults (not the image processor's)."""
    for name in VIDEO_CONFIG_FILES:
        f = os.path.join(path, name)
        if os.path.isfile(f):
            with open(f, encoding="utf-8") as fh:
                cfg = json.load(fh)
            size = cfg.get("size") or {}
            return (cfg.get("min_pixels", size.get("shortest_edge", VIDEO_PROCESSOR_PIXELS[0])),
                    cfg.get("max_pixels", size.get("longest_edge", VIDEO_PROCESSOR_PIXELS[1])))
    return None


def checkpoint_processor(pp):
    """The image/video processor MindSpeed-MM trains with: the one of the checkpoint named by
    `preprocess_parameters.model_name_or_path` (its `preprocessor_config.json`: min/max_pixels, patch
    and merge sizes, mean/std), read by `Qwen2VLImageProcessor.from_pretrained` as inference does,
    with the video pixel limits of transformers' video processor for that directory
    (`_video_pixel_limits`); HF's defaults when the directory has no such file."""
    path = pp.model_name_or_path
    if not (path and os.path.isdir(path)):
        return Qwen2VLImageProcessor()
    try:
        video = _video_pixel_limits(path)
        extra = dict(video_min_pixels=video[0], video_max_pixels=video[1]) if video else {}
        return Qwen2VLImageProcessor.from_pretrained(path, **extra)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path} (preprocess_parameters.model_name_or_path): cannot build the image/video processor "
                        f"from its {' / '.join(VIDEO_CONFIG_FILES)}: {e}; fix or remove the file") from None


def _processor_key(processor):
    """What of the processor changes token counts or pixels (part of the cache fingerprint)."""
    return {k: getattr(processor, k) for k in ("min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels",
                                                "patch_size", "merge_size",
                                                "temporal_patch_size", "do_resize", "image_mean", "image_std",
                                                "rescale_factor", "do_rescale", "do_normalize")}


_EMPTY_WARNINGS_PER_PROCESS = 5
_empty_warned = [0]


def _warn_empty_answers(sample, source, index):
    """MindSpeed-MM trains on an empty assistant answer (its labels are then `<|im_end|>` alone); that
    is kept, but said: it is usually a conversion mistake. A few lines per preprocessing process (the
    count is not shared between worker processes, and a reused cache does not repeat them)."""
    answers = [m for m in sample["prompt"] + sample["response"] if m["role"] in ("assistant", "function")]
    if not any(not m["content"].strip() for m in answers) or _empty_warned[0] >= _EMPTY_WARNINGS_PER_PROCESS:
        return
    _empty_warned[0] += 1
    more = " (further empty answers are not listed)" if _empty_warned[0] == _EMPTY_WARNINGS_PER_PROCESS else ""
    logger.warning("%s: sample %d has an empty assistant answer: it trains on <|im_end|> alone, as in "
                   "MindSpeed-MM; fix or drop the sample if that is not intended%s", source, index, more)


class _Preprocessor:
    """The per-record function given to `datasets.map` (picklable for worker processes)."""

    def __init__(self, cfg, tokenizer, seq_length, source, processor=None):
        self.pp, self.basic, self.attr = cfg.preprocess_parameters, cfg.basic_parameters, cfg.attr
        self.template = get_template(self.basic.template, tokenizer)
        self.processor = processor or checkpoint_processor(self.pp)
        self.seq_length, self.source = seq_length, source
        m = self.processor.merge_size
        self.factor, self.merge2 = self.processor.patch_size * m, m * m

    def image_tokens(self, path):
        img = pre_resize(load_image(path), self.pp.image_max_pixels, self.pp.image_min_pixels)
        h, w = smart_resize(img.height, img.width, self.factor, self.processor.min_pixels, self.processor.max_pixels)
        return (h // self.processor.patch_size) * (w // self.processor.patch_size) // self.merge2

    def video_tokens(self, path):
        frames = regularize_video(path, self.pp.video_fps, self.pp.video_maxlen, self.pp.video_max_pixels,
                                  self.pp.video_min_pixels)
        h, w = smart_resize(frames[0].height, frames[0].width, self.factor, self.processor.video_min_pixels,
                            self.processor.video_max_pixels)
        t = len(frames) // self.processor.temporal_patch_size
        return t * (h // self.processor.patch_size) * (w // self.processor.patch_size) // self.merge2

    def __call__(self, example, index):
        row = dict(_EMPTY_ROW, source=self.source, index=index)
        try:
            s = align_example(example, self.attr, self.basic.dataset_dir)
            _warn_empty_answers(s, self.source, index)
            row["images"], row["videos"] = s["images"], s["videos"]
            row["image_tokens"] = [self.image_tokens(p) for p in s["images"]]
            row["video_tokens"] = [self.video_tokens(p) for p in s["videos"]]
            msgs = expand_vision_placeholders(s["prompt"] + s["response"], row["image_tokens"], row["video_tokens"])
            if self.attr.ranking:
                n = len(s["prompt"])
                c, cl, r, rl = self.template.encode_pairwise(msgs[:n], msgs[n], msgs[n + 1], s["system"], self.seq_length)
                row.update(input_ids=c, labels=cl, rejected_input_ids=r, rejected_labels=rl)
            else:
                ids, labels = self.template.encode_supervised(
                    msgs, s["system"], self.seq_length, self.basic.train_on_prompt, self.basic.mask_history)
                row.update(input_ids=ids, labels=labels)
        except (BrokenSample, SkipSample) as e:
            row.update(_EMPTY_ROW, source=self.source, index=index, skip=str(e))
        except (MediaError, ValueError, KeyError, TypeError) as e:
            row.update(_EMPTY_ROW, source=self.source, index=index, error=f"{self.source}: sample {index}: {e}")
        return row


def _load_json(path, cache_dir, streaming, key="basic_parameters.dataset"):
    import datasets

    if not os.path.isfile(path):
        raise DataError(f"dataset file not found: {path} ({key})")
    try:
        return datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache_dir, streaming=streaming)
    except Exception as e:  # datasets wraps JSON errors in DatasetGenerationError
        cause = e.__cause__ or e
        raise DataError(f"{path}: cannot read the dataset as JSON / JSON lines: {type(cause).__name__}: {cause}") from None


def _check_first_error(ds, path):
    errs = ds.filter(lambda e: bool(e), input_columns="error", keep_in_memory=True)
    if len(errs):
        raise DataError(errs[0]["error"] + (f" ({len(errs)} samples of {path} have errors)" if len(errs) > 1 else ""))


class SkipReport:
    """Counts skipped samples per reason and logs one warning (with the first sample of each reason)."""

    def __init__(self):
        self.counts, self.first = {}, {}

    def add(self, source, index, reason):
        key = reason.split(":")[0] if reason.startswith("message ") else reason
        key = key.split(", got")[0]
        self.counts[key] = self.counts.get(key, 0) + 1
        self.first.setdefault(key, f"{source} sample {index}")

    @property
    def total(self):
        return sum(self.counts.values())

    def log(self, what="preprocessing"):
        if self.total:
            detail = "; ".join(f"{n} x {k} (first: {self.first[k]})" for k, n in self.counts.items())
            logger.warning("%s: skipped %d sample(s): %s", what, self.total, detail)


def _preprocess_file(path, cfg, tokenizer, seq_length, max_samples, fingerprint_base, report, processor,
                     key="basic_parameters.dataset"):
    b = cfg.basic_parameters
    ds = _load_json(path, b.cache_dir, streaming=False, key=key)
    if max_samples:
        ds = ds.select(range(min(len(ds), max_samples)))
    fn = _Preprocessor(cfg, tokenizer, seq_length, path, processor)
    fp = hashlib.sha256(f"{fingerprint_base}|{_file_digest(path)}|{max_samples}".encode()).hexdigest()[:16]
    kwargs = dict(with_indices=True, remove_columns=ds.column_names, new_fingerprint=fp,
                  desc=f"preprocessing {os.path.basename(path)}")
    if b.cache_dir:
        os.makedirs(b.cache_dir, exist_ok=True)
        kwargs.update(cache_file_name=os.path.join(os.path.abspath(b.cache_dir), f"mindspeed_ms_{fp}.arrow"),
                      load_from_cache_file=not b.overwrite_cache)
    else:
        kwargs.update(keep_in_memory=True)
    workers = b.preprocessing_num_workers
    if workers and workers > 1 and len(ds) >= 2 * workers:
        kwargs["num_proc"] = min(workers, os.cpu_count() or 1)
    ds = ds.map(fn, **kwargs)
    _check_first_error(ds, path)
    for src, idx, reason in zip(ds["source"], ds["index"], ds["skip"]):
        if reason:
            report.add(src, idx, reason)
    return ds.filter(lambda s: not s, input_columns="skip", keep_in_memory=not b.cache_dir)


def _fingerprint_base(cfg, tokenizer, seq_length, processor):
    params = {"pp": vars(cfg.preprocess_parameters), "basic": {k: v for k, v in vars(cfg.basic_parameters).items()
                                                                if k not in ("cache_dir", "preprocessing_num_workers",
                                                                             "overwrite_cache", "packing",
                                                                             "neat_packing")},
              "attr": {k: v for k, v in vars(cfg.attr).items() if k != "packing"}, "seq": seq_length,
              "v": PREPROCESS_VERSION, "tok": tokenizer_fingerprint(tokenizer),
              "processor": _processor_key(processor)}
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


class MultimodalDataset:
    """Map-style dataset of preprocessed rows; `ds[i]` adds pixels (numpy) to the token ids."""

    def __init__(self, rows, cfg, processor=None):
        self.rows, self.cfg = rows, cfg
        self.ranking = cfg.attr.ranking
        self.processor = processor or checkpoint_processor(cfg.preprocess_parameters)
        self.skipped = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return materialize(self.rows[int(i)], self.cfg, self.processor)

    def lengths(self):
        """Token count of every sample (int64 array), for the length-grouping samplers. Preprocessing
        already expanded each image / video placeholder to its merged-token count, so this is the
        exact sequence the collator pads (vision included, each token standing for merge^2
        patches), read from the Arrow column without decoding an image. Ranking rows put chosen
        and rejected in one padded batch: their longer one counts."""
        import pyarrow.compute as pc

        cols = ["input_ids", "rejected_input_ids"] if self.ranking else ["input_ids"]
        table = self.rows.select_columns(cols).with_format("arrow")[:]
        counts = [pc.list_value_length(table[c]).to_numpy(zero_copy_only=False).astype(np.int64) for c in cols]
        return np.maximum.reduce(counts)


def materialize(row, cfg, processor):
    """A preprocessed row -> sample dict of numpy arrays (pixels computed here)."""
    pp = cfg.preprocess_parameters
    where = f"{row['source']}: sample {row['index']}"
    out = {}
    try:
        if row["images"]:
            imgs = [pre_resize(load_image(p), pp.image_max_pixels, pp.image_min_pixels) for p in row["images"]]
            r = processor(images=imgs)
            out["pixel_values"], out["image_grid_thw"] = r["pixel_values"], r["image_grid_thw"]
            got = (r["image_grid_thw"].prod(axis=1) // processor.merge_size ** 2).tolist()
            if got != list(row["image_tokens"]):
                raise DataError(f"{where}: an image changed since preprocessing ({got} vs {row['image_tokens']} "
                                f"tokens); clear cache_dir or set overwrite_cache: true")
        if row["videos"]:
            vids = [regularize_video(p, pp.video_fps, pp.video_maxlen, pp.video_max_pixels, pp.video_min_pixels)
                    for p in row["videos"]]
            r = processor(videos=vids)
            out["pixel_values_videos"], out["video_grid_thw"] = r["pixel_values_videos"], r["video_grid_thw"]
            # Qwen2.5-VL's absolute time (the collator passes it on where the family uses it)
            out["second_per_grid_ts"] = np.asarray([processor.temporal_patch_size / sampled_fps(p, pp.video_fps, pp.video_maxlen)
                                                    for p in row["videos"]], np.float64)
    except MediaError as e:
        raise DataError(f"{where}: {e}") from None
    ids = lambda k: np.asarray(row[k], dtype=np.int32)  # noqa: E731
    if cfg.attr.ranking:
        out.update(chosen_input_ids=ids("input_ids"), chosen_labels=ids("labels"),
                   rejected_input_ids=ids("rejected_input_ids"), rejected_labels=ids("rejected_labels"))
    else:
        out.update(input_ids=ids("input_ids"), labels=ids("labels"))
    return out


class StreamingMultimodalDataset:
    """Iterable dataset for `streaming: true`: records are read, preprocessed and materialized lazily.
    Skipped samples are counted in `.report` (logged when an epoch ends)."""

    def __init__(self, paths, cfg, tokenizer, seq_length, processor=None):
        self.paths, self.cfg, self.tokenizer, self.seq_length = paths, cfg, tokenizer, seq_length
        self.processor = processor or checkpoint_processor(cfg.preprocess_parameters)
        self.report = SkipReport()

    def rows(self):
        for path in self.paths:
            fn = _Preprocessor(self.cfg, self.tokenizer, self.seq_length, path, self.processor)
            stream = _load_json(path, self.cfg.basic_parameters.cache_dir, streaming=True)
            try:
                for index, example in enumerate(stream):
                    row = fn(example, index)
                    if row["error"]:
                        raise DataError(row["error"])
                    if row["skip"]:
                        self.report.add(path, index, row["skip"])
                        continue
                    yield row
            except DataError:
                raise
            except Exception as e:  # JSON errors surface while iterating a stream
                cause = e.__cause__ or e
                raise DataError(f"{path}: cannot read the dataset as JSON / JSON lines: {type(cause).__name__}: {cause}") from None

    def __iter__(self):
        self.report = SkipReport()
        for row in self.rows():
            yield materialize(row, self.cfg, self.processor)
        self.report.log("streaming")


def _build_split(paths, cfg, tokenizer, seq_length, max_samples, what, processor):
    import datasets

    report = SkipReport()
    base = _fingerprint_base(cfg, tokenizer, seq_length, processor)
    key = "basic_parameters.val_dataset" if what == "validation" else "basic_parameters.dataset"
    parts = [_preprocess_file(p, cfg, tokenizer, seq_length, max_samples, base, report, processor, key)
             for p in paths]
    report.log(f"preprocessing {what}")
    rows = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return rows, report


def build_datasets(cfg, seq_length, seed=1234, tokenizer=None, processor=None):
    """(train, val) datasets for a validated `DataConfig`; val is None without val_dataset/val_rate.

    Map-style `MultimodalDataset`s, or `StreamingMultimodalDataset`s when `streaming: true`.
    The tokenizer and the image/video processor default to those of
    `preprocess_parameters.model_name_or_path` (`checkpoint_processor`)."""
    pp, b = cfg.preprocess_parameters, cfg.basic_parameters
    if tokenizer is None:
        tokenizer = load_tokenizer(pp.model_name_or_path, pp.use_fast_tokenizer, pp.split_special_tokens)
    processor = processor or checkpoint_processor(pp)
    if b.streaming:
        train = StreamingMultimodalDataset(cfg.datasets, cfg, tokenizer, seq_length, processor)
        val = StreamingMultimodalDataset(cfg.val_datasets, cfg, tokenizer, seq_length, processor) if cfg.val_datasets else None
        return train, val
    rows, report = _build_split(cfg.datasets, cfg, tokenizer, seq_length, b.max_samples, "train", processor)
    val_rows = None
    if cfg.val_datasets:
        val_rows, _ = _build_split(cfg.val_datasets, cfg, tokenizer, seq_length, b.val_max_samples, "validation",
                                   processor)
    elif b.val_rate:
        size = int(b.val_rate) if b.val_rate >= 1 else b.val_rate
        if len(rows) < 2:
            raise DataError(f"val_rate {b.val_rate}: the training set has {len(rows)} sample(s), too few to split")
        split = rows.train_test_split(test_size=size, seed=seed, keep_in_memory=True)
        rows, val_rows = split["train"], split["test"]
        if b.val_max_samples:
            val_rows = val_rows.select(range(min(len(val_rows), b.val_max_samples)))
    if len(rows) == 0:
        raise DataError(f"no usable training samples in {', '.join(cfg.datasets)} "
                        f"({report.total} skipped; see the warning above)")
    train = MultimodalDataset(rows, cfg, processor)
    train.skipped = report.total
    return train, (MultimodalDataset(val_rows, cfg, processor) if val_rows is not None else None)
