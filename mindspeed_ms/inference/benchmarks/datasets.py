"""The four benchmarks' VLMEvalKit TSV files -> rows and prompts, as MindSpeed-MM reads them.

A TSV has an `index` column, an `image` column with base64-encoded images (or, VLMEvalKit's
de-duplication, the index of another row whose image is the same: any value of 64 characters or
less), `question`, `answer`, and per benchmark `A`..`D` / `hint` (multiple choice), `category`,
`split`, `image_path` (file names for rows with several images, MMMU). Rows without an image are
dropped. Images are written once, as MindSpeed-MM does, to `<tsv dir>/<dataset>/images/<index>.jpg`
(or the `image_path` names) and the prompt points at those files.

Prompts: `evaluation_model: qwen2_vl_7b` uses the Qwen2-VL prompts (`use_custom_prompt`, default
true); otherwise each dataset's own. Both are built here with the same wording.
"""
import base64
import io
import os
import string

from mindspeed_ms.inference.benchmarks.scoring import is_literal_of, is_na

DATASET_TYPES = {"ai2d_test": "MCQ", "docvqa_val": "VQA", "chartqa_test": "VQA", "mmmu_dev_val": "MCQ"}
PROMPT_MODELS = ("qwen2_vl_7b",)   # evaluation_model values with a model-specific prompt


class BenchmarkError(ValueError):
    """A TSV file that is not in the benchmark's format (the message names file, row and column)."""


def _as_list(s):
    import ast

    if isinstance(s, str) and s.startswith("[") and s.endswith("]"):
        return [str(x) for x in ast.literal_eval(s)]
    if isinstance(s, str):
        return [s]
    if isinstance(s, list):
        return [str(x) for x in s]
    raise BenchmarkError(f"expected a string or a list, got {type(s).__name__}: {s!r}")


def read_benchmark_tsv(path, dataset_name):
    """The TSV as a pandas DataFrame, with MindSpeed-MM's preparation (image refs resolved,
    index as int when every index is an integer)."""
    import pandas as pd

    if dataset_name not in DATASET_TYPES:
        raise BenchmarkError(f"evaluation_dataset '{dataset_name}' is not one of {', '.join(DATASET_TYPES)}")
    if not os.path.isfile(path):
        raise BenchmarkError(f"dataset_path {path}: no such file (the {dataset_name} TSV in VLMEvalKit's format)")
    try:
        data = pd.read_csv(path, sep="\t")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"dataset_path {path}: not a readable TSV file: {e}") from None
    need = ["index", "image", "question", "answer"]
    missing = [c for c in need if c not in data.columns]
    if missing:
        raise BenchmarkError(f"dataset_path {path}: column(s) {', '.join(missing)} missing; a {dataset_name} TSV "
                             f"has index, image (base64), question, answer"
                             + (", A, B, C, D" if DATASET_TYPES[dataset_name] == "MCQ" else ""))
    data = data[~pd.isna(data["image"])].copy()
    if not len(data):
        raise BenchmarkError(f"dataset_path {path}: no row has an image")
    data["index"] = [str(x) for x in data["index"]]
    data["image"] = [str(x) for x in data["image"]]
    image_map = dict(zip(data["index"], data["image"]))
    for k in image_map:
        if len(image_map[k]) <= 64:   # a reference to the row holding the image
            ref = image_map[k]
            if ref not in image_map or len(image_map.get(ref, "")) <= 64:
                raise BenchmarkError(f"{path}: row index {k}: image '{ref}' is neither base64 data nor the index "
                                     f"of a row with an image")
            image_map[k] = image_map[ref]
    images = [_as_list(image_map[k]) for k in data["index"]]
    data["image"] = [x[0] if len(x) == 1 else x for x in images]
    if "image_path" in data:
        paths = [_as_list(x) for x in data["image_path"]]
        data["image_path"] = [x[0] if len(x) == 1 else x for x in paths]
    if all(is_literal_of(x, int) for x in data["index"]):
        data["index"] = [int(x) for x in data["index"]]
    if data["index"].duplicated().any():
        dup = data["index"][data["index"].duplicated()].iloc[0]
        raise BenchmarkError(f"dataset_path {path}: index {dup} appears more than once")
    return data.reset_index(drop=True)


def image_dir(dataset_path, dataset_name):
    return os.path.join(os.path.split(dataset_path)[0], dataset_name, "images")


def _valid_image(path):
    from PIL import Image

    if not os.path.exists(path):
        return False
    try:
        with Image.open(path) as im:
            w, h = im.size
        return w > 0 and h > 0
    except (OSError, ValueError):
        return False


def _write_base64_image(data, path, where):
    from PIL import Image

    try:
        raw = base64.b64decode(data)
        with Image.open(io.BytesIO(raw)) as im:
            if im.mode in ("RGBA", "P"):
                im = im.convert("RGB")
            im = im.copy()
    except (ValueError, OSError) as e:
        raise BenchmarkError(f"{where}: the image column is not a base64-encoded image ({e})") from None
    im.save(path)


def dump_images(row, out_dir, where):
    """The row's image files (written from base64 unless a valid file is already there)."""
    os.makedirs(out_dir, exist_ok=True)
    img = row["image"]
    if isinstance(img, list):
        names = row["image_path"] if "image_path" in row else None
        if names is None or (not isinstance(names, list) and is_na(names)):
            raise BenchmarkError(f"{where}: several images but no image_path column naming their files")
        names = names if isinstance(names, list) else [names]
        out = []
        for data, name in zip(img, names):
            p = os.path.join(out_dir, name)
            if not _valid_image(p):
                _write_base64_image(data, p, where)
            out.append(p)
        return out
    p = os.path.join(out_dir, f"{row['index']}.jpg")
    if not _valid_image(p):
        _write_base64_image(img, p, where)
    return [p]


def _is_cn(s):
    import re

    return re.search("[\u4e00-\u9fff]", s) is not None


def _mcq_text(row, tail):
    options = {c: row[c] for c in string.ascii_uppercase if c in row and not is_na(row[c])}
    hint = row["hint"] if ("hint" in row and not is_na(row["hint"])) else None
    prompt = f"Hint: {hint}\n" if hint is not None else ""
    prompt += f"Question: {row['question']}\n"
    if options:
        prompt += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
        prompt += tail(prompt)
    return prompt


def build_prompt(row, images, dataset_name, evaluation_model, use_custom_prompt=True):
    """[{"type": "image"|"text", "value": ...}, ...]: the model's message for one row."""
    kind = DATASET_TYPES[dataset_name]
    custom = use_custom_prompt and evaluation_model in PROMPT_MODELS
    msgs = [{"type": "image", "value": p} for p in images]
    if custom:
        if dataset_name in ("mmmu_dev_val", "mmmu_test"):
            text = _mcq_text(row, lambda _: "Please select the correct answer from the options above. \n").rstrip()
        elif kind == "MCQ":
            text = _mcq_text(row, lambda p: "请直接回答选项字母。" if _is_cn(p) else
                             "Please select the correct answer from the options above.").rstrip()
        else:
            text = str(row["question"]) + "\nPlease try to answer the question with short words or phrases if possible."
        return msgs + [{"type": "text", "value": text}]
    if kind == "MCQ":
        text = _mcq_text(row, lambda _: "Please select the correct answer from the options above. \n")
        msgs = msgs + [{"type": "text", "value": text}]
        return _split_mmmu(msgs) if dataset_name == "mmmu_dev_val" else msgs
    return msgs + [{"type": "text", "value": str(row["question"]) +
                    "\nAnswer the question using a single word or phrase."}]


def _split_mmmu(msgs):
    """MMMU's own prompt: '<image k>' tags in the text place image k there (else images first)."""
    images = [m["value"] for m in msgs if m["type"] == "image"]
    text = next(m["value"] for m in msgs if m["type"] == "text")
    segs = text.split("<image ")
    if len(segs) == 1:
        return msgs
    out = [{"type": "text", "value": segs[0]}]
    for seg in segs[1:]:
        if not (seg[:1].isdigit() and seg[1:2] == ">"):
            raise BenchmarkError(f"MMMU question text has a malformed image tag '<image {seg[:3]}'")
        out.append({"type": "image", "value": images[int(seg[0]) - 1]})
        out.append({"type": "text", "value": seg[2:]})
    return out
