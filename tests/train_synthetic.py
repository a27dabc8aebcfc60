"""Synthetic micro-batches for the training-loop tests: real model, real collation
(`Qwen2VLForConditionalGeneration.prepare_batch`), random tokens and pixels with a fixed seed.

The tiny config has a small vocabulary (the loop's behaviour does not depend on its size) with the
vision token ids moved inside it."""
import copy
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json")
VOCAB = 512
IMG_PAD, VID_PAD, V_START, V_END = 500, 501, 502, 503


def small_model_json(path, freeze_vision=False):
    cfg = json.load(open(TINY_MODEL))
    cfg = copy.deepcopy(cfg)
    cfg["text_decoder"]["vocab_size"] = VOCAB
    cfg["img_context_token_id"], cfg["video_token_id"], cfg["vision_start_token_id"] = IMG_PAD, VID_PAD, V_START
    cfg["image_encoder"]["vision_encoder"]["freeze"] = freeze_vision
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def make_samples(n, seed=0, answer_len=None, grid=(1, 4, 4)):
    """n samples: prompt text, one image (grid t,h,w), answer text; labels -100 on the prompt."""
    rng = np.random.default_rng(seed)
    t, h, w = grid
    n_img_tokens = t * h * w // 4
    out = []
    for i in range(n):
        prompt = list(rng.integers(10, 400, size=int(rng.integers(3, 9))))
        ans = list(rng.integers(10, 400, size=answer_len or int(rng.integers(2, 9))))
        ids = prompt[:2] + [V_START] + [IMG_PAD] * n_img_tokens + [V_END] + prompt[2:] + ans
        labels = [-100] * (len(ids) - len(ans)) + ans
        pixels = rng.standard_normal((t * h * w, 3 * 2 * 14 * 14)).astype(np.float32)
        out.append({"input_ids": np.array(ids), "labels": np.array(labels), "pixel_values": pixels,
                    "image_grid_thw": np.array([[t, h, w]])})
    return out


def collate(model, samples, idx, bucket=8):
    """Right-pad to a multiple of `bucket` and build the batch contract with the model's host code."""
    chosen = [samples[i] for i in idx]
    length = max(len(s["input_ids"]) for s in chosen)
    length = -(-length // bucket) * bucket
    ids = np.zeros((len(chosen), length), np.int64)
    labels = np.full((len(chosen), length), -100, np.int64)
    mask = np.zeros((len(chosen), length), np.int64)
    for b, s in enumerate(chosen):
        n = len(s["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = s["input_ids"], s["labels"], 1
    pixels = np.concatenate([s["pixel_values"] for s in chosen])
    grids = np.concatenate([s["image_grid_thw"] for s in chosen])
    batch, _ = model.network.prepare_batch(ids, mask, pixels, grids, labels=labels)
    return batch
