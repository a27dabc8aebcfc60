"""The demo dataset: deterministic, and every answer agrees with what is actually drawn.

The answers are re-derived from the pixels with plain numpy (saturated pixels are the shapes, the
backgrounds are greys), independently of the generator's own bookkeeping.
"""
import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from mindspeed_ms.tools import make_demo_dataset as mdd

N_TRAIN, N_VAL = 40, 21


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    mdd.make_demo_dataset(str(out), seed=7, n_train=N_TRAIN, n_val=N_VAL)
    return str(out)


def _load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def _shape_mask(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int32)
    sat = rgb.max(-1) - rgb.min(-1)
    return rgb, sat > 80


def _components(mask):
    """4-connected components of a boolean mask, as lists of (y, x)."""
    seen = np.zeros_like(mask)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, comp = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(comp)
    return comps


def _colour_of(rgb, mask):
    mean = rgb[mask].mean(0)
    return min(mdd.PALETTE, key=lambda c: float(((np.array(mdd.PALETTE[c]) - mean) ** 2).sum()))


def _shape_of(comp):
    ys, xs = np.array(comp).T
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(comp) / float(h * w)
    if fill > 0.93:
        return "square"
    if fill > 0.65:
        return "circle"
    # triangle (apex up) is widest at the bottom; a diamond is widest in the middle
    widths = np.bincount(ys - ys.min())
    return "triangle" if np.argmax(widths) > 0.8 * (h - 1) else "diamond"


def _derive(d, rel):
    rgb, mask = _shape_mask(os.path.join(d, rel))
    comps = [c for c in _components(mask) if len(c) > 20]
    assert comps, f"{rel}: no shape found"
    biggest = max(comps, key=len)
    cx = np.mean([x for _, x in biggest])
    return {
        "colour": _colour_of(rgb, mask),
        "shape": _shape_of(biggest),
        "count": mdd.COUNT_WORDS[len(comps)],
        "side": "left" if cx < rgb.shape[1] / 2 else "right",
        "size": (rgb.shape[1], rgb.shape[0]),
    }


def test_answers_match_pixels(dataset):
    for split in ("train", "val"):
        samples, types = _load(dataset, f"{split}.json"), _load(dataset, f"{split}_types.json")
        assert len(samples) == len(types)
        for s, t in zip(samples, types):
            msgs = s["messages"]
            assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
            n_img_tokens = sum(m["content"].count("<image>") for m in msgs)
            assert n_img_tokens == len(s.get("images", []))
            answer = msgs[-1]["content"]
            if t == "text":
                assert "images" not in s and msgs[0]["content"].endswith(answer)
                continue
            facts = [_derive(dataset, p) for p in s["images"]]
            for f in facts:
                assert mdd.MIN_SIDE <= min(f["size"]) and max(f["size"]) <= mdd.MAX_SIDE
            if t == "colour":
                assert answer == facts[0]["colour"]
            elif t == "shape":
                assert answer == facts[0]["shape"]
            elif t == "count":
                assert answer == facts[0]["count"]
            elif t == "position":
                assert answer == facts[0]["side"]
            elif t == "multi_image":
                which = 0 if "first" in msgs[0]["content"] else 1
                assert answer == facts[which]["colour"]
            elif t == "multi_turn":
                assert msgs[1]["content"] == facts[0]["colour"] and answer == facts[0]["shape"]
            elif t == "quiz":
                assert split == "train" and len(msgs) == 6
                got = sorted(m["content"] for m in msgs[1::2])
                assert got == sorted([facts[0]["colour"], facts[0]["shape"], facts[0]["side"]])
            else:
                raise AssertionError(f"unexpected type {t}")


def test_every_type_present_and_splits_disjoint(dataset):
    assert set(_load(dataset, "val_types.json")) == set(mdd.TYPES)
    assert set(_load(dataset, "train_types.json")) == {t for t, _ in mdd.TRAIN_TYPE_WEIGHTS}
    train_imgs = {p for s in _load(dataset, "train.json") for p in s.get("images", [])}
    val_imgs = {p for s in _load(dataset, "val.json") for p in s.get("images", [])}
    assert not train_imgs & val_imgs
    # held-out pixels differ too, not only the names
    a = np.asarray(Image.open(os.path.join(dataset, sorted(train_imgs)[0])))
    b = np.asarray(Image.open(os.path.join(dataset, sorted(val_imgs)[0])))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_deterministic_from_seed(dataset, tmp_path):
    mdd.make_demo_dataset(str(tmp_path / "again"), seed=7, n_train=N_TRAIN, n_val=N_VAL)
    cmp = filecmp.dircmp(dataset, str(tmp_path / "again"))
    assert not cmp.left_only and not cmp.right_only
    for name in cmp.common_files:
        assert filecmp.cmp(os.path.join(dataset, name), str(tmp_path / "again" / name), shallow=False), name
    imgs = os.listdir(os.path.join(dataset, "images"))
    for name in imgs:
        assert filecmp.cmp(os.path.join(dataset, "images", name), str(tmp_path / "again" / "images" / name),
                           shallow=False), name
    mdd.make_demo_dataset(str(tmp_path / "other"), seed=8, n_train=N_TRAIN, n_val=N_VAL, convert_llava=False)
    assert _load(str(tmp_path / "other"), "train.json") != _load(dataset, "train.json")


def test_blank_control_keeps_questions(dataset, tmp_path):
    mdd.make_demo_dataset(str(tmp_path), seed=7, n_train=N_TRAIN, n_val=N_VAL, blank=True, convert_llava=False)
    assert _load(str(tmp_path), "val.json") == _load(dataset, "val.json")
    assert _load(str(tmp_path), "meta.json")["blank"] is True
    for s in _load(str(tmp_path), "val.json"):
        for p in s.get("images", []):
            arr = np.asarray(Image.open(str(tmp_path / p)).convert("RGB"))
            assert (arr == np.array(mdd.BLANK_GREY, np.uint8)).all()
            assert arr.shape == np.asarray(Image.open(os.path.join(dataset, p))).shape


def test_llava_copy(dataset):
    llava = _load(dataset, "llava_instruct.json")
    train = _load(dataset, "train.json")
    single = [s for s in train if len(s.get("images", [])) <= 1]
    assert len(llava) == len(single)
    for rec, s in zip(llava, single):
        assert [c["value"] for c in rec["conversations"]] == [m["content"] for m in s["messages"]]
        assert [c["from"] for c in rec["conversations"]][:2] == ["human", "gpt"]
        if s.get("images"):
            assert rec["image"] == os.path.basename(s["images"][0])
        else:
            assert "image" not in rec


def test_llava_copy_through_the_converter(dataset):
    """The LLaVA copy, converted back by llava_instruct_2_mllm_demo_format.py, is the training data
    LLaVA can express (single image or text only), image paths included."""
    converted = _load(dataset, "mllm_format_llava_instruct_data.json")
    single = [s for s in _load(dataset, "train.json") if len(s.get("images", [])) <= 1]
    assert converted == [{"images": s.get("images", []), "messages": s["messages"]} for s in single]


def test_too_small_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--train must be at least"):
        mdd.make_demo_dataset(str(tmp_path), n_train=3, n_val=30)
