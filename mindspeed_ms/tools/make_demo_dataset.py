"""Build the tiny demo's picture-question dataset: PIL-drawn images and MLLM-format conversations.

    python -m mindspeed_ms.tools.make_demo_dataset OUT_DIR [--seed S --train N --val M --blank]

Every answer about an image can only be known by looking at it: the colour of a shape, its kind, how
many shapes there are, and whether a shape sits on the left or the right. A few samples are
multi-turn, multi-image or text-only so that those data paths are exercised too. Written under
OUT_DIR:

- ``images/{train,val}_NNNNN[_k].png``   the drawn images (small: 56..140 px sides, so the ViT is cheap)
- ``train.json`` / ``val.json``        MLLM format ``[{"images": [...], "messages": [...]}]``; image
  paths are relative to OUT_DIR (use OUT_DIR as ``dataset_dir``). The held-out split ``val.json``
  has its own images drawn from an independent random stream.
- ``train_types.json`` / ``val_types.json``  the question type of each sample (same order). The type
  lives in a side file, not in the samples, so that the samples carry only the keys every MLLM
  loader knows.
- ``llava_instruct.json``          the single-image and text-only training samples in LLaVA-Instruct
  format, and ``mllm_format_llava_instruct_data.json``, that file converted back to MLLM format by
  ``examples/mindspore/qwen2vl/llava_instruct_2_mllm_demo_format.py`` (so the converter is exercised).
- ``meta.json``                    seed, sizes, palette, and whether images were blanked.

``--blank`` draws every image as plain grey while keeping the same questions and answers: training on
it is the control run showing that answers come from the vision path.

The output is a pure function of the arguments (same seed -> byte-identical files).
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well separated hues: backgrounds are always low-saturation greys/beiges, so the shape
# colour is recoverable from the pixels (the tests re-derive it that way).
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 205, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
BLANK_GREY = (128, 128, 128)
MIN_SIDE, MAX_SIDE = 56, 140

COLOUR_QUESTIONS = (
    "What colour is the shape?",
    "What color is the shape in the picture?",
    "Which colour does the shape have?",
)
SHAPE_QUESTIONS = (
    "What shape is shown?",
    "What kind of shape is in the picture?",
)
COUNT_QUESTIONS = (
    "How many shapes are there?",
    "How many shapes can you see?",
)
POSITION_QUESTIONS = (
    "Is the shape on the left or on the right?",
    "Is the shape on the left side or the right side of the picture?",
)
TEXT_WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "candle", "forest", "rocket")

# Share of each question type in a split; colour dominates because it is the headline metric.
TYPE_WEIGHTS = (
    ("colour", 0.34),
    ("shape", 0.14),
    ("count", 0.12),
    ("position", 0.14),
    ("multi_image", 0.10),
    ("multi_turn", 0.10),
    ("text", 0.06),
)
TYPES = tuple(t for t, _ in TYPE_WEIGHTS)
# The training split also has "quiz" samples: one picture, three questions (colour, shape, side) in
# random order. Several vision-dependent answers share one prompt, which is how a model this small
# learns to look at the image within the demo's few hundred steps.
TRAIN_TYPE_WEIGHTS = (
    ("quiz", 0.40),
    ("colour", 0.30),
    ("shape", 0.04),
    ("count", 0.06),
    ("position", 0.04),
    ("multi_image", 0.06),
    ("multi_turn", 0.05),
    ("text", 0.05),
)


def _background(rng, nrng, w, h):
    """A plain or textured low-saturation background as an RGB uint8 array."""
    kind = rng.choice(("plain", "plain", "noise", "stripes", "checker"))
    base = rng.randint(170, 245)
    tint = (rng.randint(-8, 8), rng.randint(-8, 8), rng.randint(-8, 8))  # slight warm/cool cast
    arr = np.empty((h, w, 3), np.int32)
    for c in range(3):
        arr[..., c] = base + tint[c]
    if kind == "noise":
        arr += nrng.integers(-25, 26, size=(h, w, 1), dtype=np.int32)  # grey noise keeps saturation low
    elif kind in ("stripes", "checker"):
        period = rng.randint(4, 12)
        yy, xx = np.mgrid[0:h, 0:w]
        if kind == "stripes":
            band = ((xx + yy if rng.random() < 0.5 else xx) // period) % 2
        else:
            band = ((xx // period) + (yy // period)) % 2
        arr -= (band * rng.randint(20, 45))[..., None]
    return np.clip(arr, 0, 255).astype(np.uint8)


def _draw_shape(draw, kind, box, fill):
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "diamond":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def _jitter(rng, rgb):
    return tuple(int(np.clip(v + rng.randint(-15, 15), 0, 255)) for v in rgb)


def _place(rng, w, h, size, taken, region=None):
    """A box of side `size` inside `region` (x range) that does not touch the boxes in `taken`."""
    lo, hi = region if region else (0, w)
    for _ in range(200):
        x0 = rng.randint(lo, max(lo, hi - size))
        y0 = rng.randint(0, h - size)
        box = (x0, y0, x0 + size - 1, y0 + size - 1)
        if all(box[2] + 2 < t[0] or t[2] + 2 < box[0] or box[3] + 2 < t[1] or t[3] + 2 < box[1] for t in taken):
            return box
    return None


def draw_image(rng, nrng, spec):
    """Draw one image from its spec: {"colour", "shape", "count", "side" (None/"left"/"right")}."""
    w = rng.randint(MIN_SIDE, MAX_SIDE)
    h = rng.randint(MIN_SIDE, MAX_SIDE)
    if spec["side"] is not None:
        w = max(w, 84)  # leave room for a clear left/right third
    img = Image.fromarray(_background(rng, nrng, w, h))
    draw = ImageDraw.Draw(img)
    short = min(w, h)
    count = spec["count"]
    while True:
        frac = rng.uniform(0.45, 0.7) if count == 1 else rng.uniform(0.22, 0.32)
        size = max(12, int(short * frac))
        if spec["side"] == "left":
            region = (0, int(w * 0.4))
        elif spec["side"] == "right":
            region = (int(w * 0.6), w)
        else:
            region = None
        if region is not None:
            size = min(size, region[1] - region[0])
        boxes = []
        for _ in range(count):
            box = _place(rng, w, h, size, boxes, region)
            if box is None:
                break
            boxes.append(box)
        if len(boxes) == count:
            break
    for box in boxes:
        _draw_shape(draw, spec["shape"], box, _jitter(rng, PALETTE[spec["colour"]]))
    return img


def _random_spec(rng, count=1, side=None):
    return {"colour": rng.choice(sorted(PALETTE)), "shape": rng.choice(SHAPES), "count": count, "side": side}


def _question_sample(rng, qtype):
    """Return (specs, messages) for one sample of the given type."""
    if qtype == "colour":
        spec = _random_spec(rng)
        return [spec], [("<image>" + rng.choice(COLOUR_QUESTIONS), spec["colour"])]
    if qtype == "shape":
        spec = _random_spec(rng)
        return [spec], [("<image>" + rng.choice(SHAPE_QUESTIONS), spec["shape"])]
    if qtype == "count":
        spec = _random_spec(rng, count=rng.randint(1, 4))
        return [spec], [("<image>" + rng.choice(COUNT_QUESTIONS), COUNT_WORDS[spec["count"]])]
    if qtype == "position":
        spec = _random_spec(rng, side=rng.choice(("left", "right")))
        return [spec], [("<image>" + rng.choice(POSITION_QUESTIONS), spec["side"])]
    if qtype == "multi_image":
        first, second = _random_spec(rng), _random_spec(rng)
        which = rng.choice(("first", "second"))
        answer = (first if which == "first" else second)["colour"]
        return [first, second], [(f"<image><image>What colour is the shape in the {which} picture?", answer)]
    if qtype == "multi_turn":
        spec = _random_spec(rng)
        return [spec], [
            ("<image>" + rng.choice(COLOUR_QUESTIONS), spec["colour"]),
            (rng.choice(SHAPE_QUESTIONS), spec["shape"]),
        ]
    if qtype == "quiz":
        spec = _random_spec(rng, side=rng.choice(("left", "right")))
        turns = [(rng.choice(COLOUR_QUESTIONS), spec["colour"]), (rng.choice(SHAPE_QUESTIONS), spec["shape"]),
                 (rng.choice(POSITION_QUESTIONS), spec["side"])]
        rng.shuffle(turns)
        return [spec], [("<image>" + turns[0][0], turns[0][1])] + turns[1:]
    if qtype == "text":
        word = rng.choice(TEXT_WORDS)
        return [], [(f"Repeat the word: {word}", word)]
    raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(TYPES)}")


def _split_types(rng, n, weights=TYPE_WEIGHTS):
    """Exactly proportioned type list (largest remainder), shuffled: small splits keep every type."""
    raw = [(t, w * n) for t, w in weights]
    counts = {t: int(x) for t, x in raw}
    rest = n - sum(counts.values())
    for t, x in sorted(raw, key=lambda tx: tx[1] - int(tx[1]), reverse=True)[:rest]:
        counts[t] += 1
    types = [t for t, _ in weights for _ in range(counts[t])]
    rng.shuffle(types)
    return types


def make_split(out_dir, split, n, seed, blank):
    """Draw `n` samples of split `split`; return (samples, types, specs_per_sample)."""
    # Independent streams per split: the held-out images never repeat the training ones.
    stream = {"train": 0, "val": 1}[split]
    rng = random.Random(seed * 1000 + stream)
    nrng = np.random.default_rng([seed, stream])
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    samples, all_specs = [], []
    types = _split_types(rng, n, TRAIN_TYPE_WEIGHTS if split == "train" else TYPE_WEIGHTS)
    for i, qtype in enumerate(types):
        specs, turns = _question_sample(rng, qtype)
        paths = []
        for k, spec in enumerate(specs):
            img = draw_image(rng, nrng, spec)  # drawn even when blank so the rng streams stay aligned
            if blank:
                img = Image.new("RGB", img.size, BLANK_GREY)
            name = f"{split}_{i:05d}" + (f"_{k}" if len(specs) > 1 else "") + ".png"
            img.save(os.path.join(img_dir, name), format="PNG")
            paths.append(f"images/{name}")
        messages = []
        for question, answer in turns:
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        sample = {"images": paths, "messages": messages} if paths else {"messages": messages}
        samples.append(sample)
        all_specs.append(specs)
    return samples, types, all_specs


def to_llava(samples):
    """LLaVA-Instruct records for the samples LLaVA can express (one image at most)."""
    records = []
    for i, s in enumerate(samples):
        images = s.get("images", [])
        if len(images) > 1:
            continue
        conv = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in s["messages"]]
        rec = {"id": f"demo-{i:05d}"}
        if images:
            rec["image"] = os.path.basename(images[0])
        rec["conversations"] = conv
        records.append(rec)
    return records


def _repo_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def converter_script():
    return os.path.join(_repo_root(), "examples", "mindspore", "qwen2vl", "llava_instruct_2_mllm_demo_format.py")


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def convert_llava_copy(out_dir):
    """Run the LLaVA -> MLLM converter on llava_instruct.json, as a MindSpeed-MM user would. It runs
    inside OUT_DIR with `--image-dir images`, so its image paths read like train.json's."""
    script = converter_script()
    if not os.path.exists(script):
        raise FileNotFoundError(f"LLaVA converter not found at {script}: the demo dataset needs it "
                                f"(or pass --no-llava)")
    out = "mllm_format_llava_instruct_data.json"
    cmd = [sys.executable, script, "--llava-json", "llava_instruct.json", "--image-dir", "images",
           "--output", out, "--overwrite"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir)
    if res.returncode != 0:
        raise RuntimeError(f"LLaVA converter failed (in {out_dir}: {' '.join(cmd)}):\n{res.stdout}\n{res.stderr}")
    return os.path.join(out_dir, out)


def make_demo_dataset(out_dir, seed=1234, n_train=1200, n_val=120, blank=False, convert_llava=True):
    if n_train < len(TRAIN_TYPE_WEIGHTS) or n_val < len(TYPES):
        raise ValueError(f"--train must be at least {len(TRAIN_TYPE_WEIGHTS)} and --val at least {len(TYPES)} "
                         f"(one sample per question type)")
    os.makedirs(out_dir, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        samples, types, _ = make_split(out_dir, split, n, seed, blank)
        _write_json(os.path.join(out_dir, f"{split}.json"), samples)
        _write_json(os.path.join(out_dir, f"{split}_types.json"), types)
        if split == "train":
            _write_json(os.path.join(out_dir, "llava_instruct.json"), to_llava(samples))
    meta = {"seed": seed, "train": n_train, "val": n_val, "blank": blank, "types": list(TYPES),
            "train_types": [t for t, _ in TRAIN_TYPE_WEIGHTS],
            "palette": {k: list(v) for k, v in PALETTE.items()}, "shapes": list(SHAPES),
            "image_side_range": [MIN_SIDE, MAX_SIDE]}
    _write_json(os.path.join(out_dir, "meta.json"), meta)
    if convert_llava:
        convert_llava_copy(out_dir)
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="directory to write images/, train.json, val.json, ...")
    p.add_argument("--seed", type=int, default=1234, help="seed of the pictures and questions (same seed, same files)")
    p.add_argument("--train", type=int, default=1200, help="number of training samples")
    p.add_argument("--val", type=int, default=120, help="number of held-out samples")
    p.add_argument("--blank", action="store_true", help="all-grey images (control run)")
    p.add_argument("--no-llava", action="store_true", help="skip the LLaVA-format copy conversion")
    args = p.parse_args(argv)
    meta = make_demo_dataset(args.out_dir, args.seed, args.train, args.val, args.blank, not args.no_llava)
    print(f"demo dataset: {meta['train']} train + {meta['val']} held-out samples in {args.out_dir}"
          f" (seed {meta['seed']}{', blank images' if meta['blank'] else ''})")


if __name__ == "__main__":
    main()
