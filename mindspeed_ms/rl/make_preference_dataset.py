"""A synthetic preference (ranking) dataset for the tiny DPO run: colour questions about drawn shapes.

    python -m mindspeed_ms.rl.make_preference_dataset OUT_DIR [--seed S --train N --val M]

Each sample shows one shape drawn by the demo-dataset painter (mindspeed_ms.tools.make_demo_dataset)
and asks for its colour; `chosen` is the right colour and `rejected` a wrong one. Every colour is
chosen in some samples and rejected in others, so the only way to prefer the chosen answer
everywhere is to look at the image. Written in MindSpeed-MM's ranking (sharegpt) format, the one
`data_72b_dpo.json` reads (`attr.ranking: true`, `chosen` / `rejected` columns):

    {"images": ["images/train_00000.png"],
     "messages": [{"role": "user", "content": "<image>What colour is the shape?"}],
     "chosen": {"role": "assistant", "content": "red"},
     "rejected": {"role": "assistant", "content": "blue"}}

Images are resized to one small square size (default 56 px: 4 x 4 patches, 4 LLM tokens) to keep
the ViT cheap on a CPU. Files: OUT_DIR/images/*.png, train.json,
val.json, meta.json. Same seed, same bytes.
"""
import argparse
import json
import os
import random

import numpy as np
from PIL import Image

from mindspeed_ms.tools.make_demo_dataset import COLOUR_QUESTIONS, PALETTE, SHAPES, draw_image


def make_split(out_dir, split, n, seed, image_size=56):
    stream = {"train": 0, "val": 1}[split]
    rng = random.Random(seed * 1000 + 7 + stream)
    nrng = np.random.default_rng([seed, 7, stream])
    colours = sorted(PALETTE)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    samples = []
    for i in range(n):
        spec = {"colour": rng.choice(colours), "shape": rng.choice(SHAPES), "count": 1, "side": None}
        wrong = rng.choice([c for c in colours if c != spec["colour"]])
        name = f"images/{split}_{i:05d}.png"
        img = draw_image(rng, nrng, spec).resize((image_size, image_size), Image.BILINEAR)
        img.save(os.path.join(out_dir, name), format="PNG")
        samples.append({"images": [name],
                        "messages": [{"role": "user", "content": "<image>" + rng.choice(COLOUR_QUESTIONS)}],
                        "chosen": {"role": "assistant", "content": spec["colour"]},
                        "rejected": {"role": "assistant", "content": wrong}})
    return samples


def make_preference_dataset(out_dir, seed=1234, n_train=64, n_val=16, image_size=56):
    if n_train < 1 or n_val < 0:
        raise ValueError(f"--train must be >= 1 and --val >= 0 (got {n_train}, {n_val})")
    if image_size < 28 or image_size % 28:
        raise ValueError(f"--image-size must be a multiple of 28 (two 14-px patches per merged token), got {image_size}")
    os.makedirs(out_dir, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(os.path.join(out_dir, f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump(make_split(out_dir, split, n, seed, image_size), f, indent=1)
            f.write("\n")
    meta = {"seed": seed, "train": n_train, "val": n_val, "task": "colour preference", "image_size": image_size,
            "colours": sorted(PALETTE)}
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.rl.make_preference_dataset",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="directory to write images/, train.json, val.json")
    p.add_argument("--seed", type=int, default=1234, help="seed of the pictures and of the pair order")
    p.add_argument("--train", type=int, default=64, help="number of training pairs")
    p.add_argument("--val", type=int, default=16, help="number of held-out pairs")
    p.add_argument("--image-size", type=int, default=56, help="side of the square images (multiple of 28)")
    a = p.parse_args(argv)
    meta = make_preference_dataset(a.out_dir, a.seed, a.train, a.val, a.image_size)
    print(f"preference dataset: {meta['train']} train + {meta['val']} held-out pairs in {a.out_dir} (seed {a.seed})")


if __name__ == "__main__":
    main()
