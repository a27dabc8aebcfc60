"""The data a sample becomes equals MindSpeed-MM 26.0.0's Qwen2-VL data path.

The references here are short readings of MindSpeed-MM's rules written for these tests (its
`Qwen2VLPlugin._preprocess_image`, `_get_video_sample_indices`, the `qwen2vl` template's slots,
`infer_seqlen` and `SupervisedDatasetProcessor` / `PairwiseDatasetProcessor`), and transformers'
own `Qwen2VLImageProcessor` for the grids; the inputs are images, videos and conversations made
here. Each test fails on the behaviour before issue 16 (NEAREST tiny/aspect resize, a function slot
with `<|im_end|>`, the vision-first truncation, frames spread over a clip without a frame count,
the default processor in training).
"""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer
from transformers import Qwen2VLImageProcessor as HFImageProcessor

from helpers.images import in_mode, rgb, write_image
from mindspeed_ms.config.data_config import parse_data_config
from mindspeed_ms.data.dataset import DataError, build_datasets
from mindspeed_ms.data.image_io import load_video_frames, pre_resize, regularize_video
from mindspeed_ms.data.template import Qwen2VLTemplate, SkipSample
from mindspeed_ms.tools.build_tokenizer import build_tokenizer

IGNORE = -100
IMAGE_PAD, VSTART, VEND = 151655, 151652, 151653


# ---------------------------------------------------------------- readings of MindSpeed-MM's rules
def mm_preprocess_image(image, max_pixels, min_pixels):
    """Qwen2VLPlugin._preprocess_image: NEAREST for the pixel-count rescale, then RGB, then the
    Qwen2-VL size rules with `resize(size)` and no filter argument."""
    if image.width * image.height > max_pixels:
        f = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * f), int(image.height * f)), resample=Image.Resampling.NEAREST)
    if image.width * image.height < min_pixels:
        f = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * f), int(image.height * f)), resample=Image.Resampling.NEAREST)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if min(image.width, image.height) < 28:
        image = image.resize((max(image.width, 28), max(image.height, 28)))
    if image.width / image.height > 200:
        image = image.resize((image.height * 180, image.height))
    if image.height / image.width > 200:
        image = image.resize((image.width, image.width * 180))
    return image


def mm_video_indices(total_frames, duration_s, fps, maxlen):
    """_get_video_sample_indices."""
    if total_frames == 0:
        return np.linspace(0, maxlen - 1, maxlen).astype(np.int32)
    n = min(total_frames, maxlen, max(1, math.floor(duration_s * fps)))
    return np.linspace(0, total_frames - 1, n).astype(np.int32)


MM_SLOTS = {"system": "<|im_start|>system\n{{content}}<|im_end|>\n",
            "user": "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",
            "assistant": "{{content}}<|im_end|>\n",
            "observation": "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n",
            "function": "{{content}}"}  # qwen2vl registers no function formatter: the default one


def mm_infer_seqlen(source_len, target_len, cutoff_len):
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target = min(max_target, target_len)
    return min(max(cutoff_len - new_target, 0), source_len), new_target


def mm_expand(messages, image_tokens, video_tokens=()):
    """Qwen2VLPlugin.process_messages: each <image> / <video> -> start + n pads + end, n from the grid."""
    it, vt, out = iter(image_tokens), iter(video_tokens), []
    for m in messages:
        c = m["content"]
        while "<image>" in c:
            c = c.replace("<image>", "<|vision_start|>" + "<|image_pad|>" * next(it) + "<|vision_end|>", 1)
        while "<video>" in c:
            c = c.replace("<video>", "<|vision_start|>" + "<|video_pad|>" * next(vt) + "<|vision_end|>", 1)
        out.append({"role": m["role"], "content": c})
    return out


def mm_encode(tok, messages, system=None):
    """Template._encode: one id list per message; each slot string tokenized on its own."""
    system = system or "You are a helpful assistant."
    enc = []
    for i, m in enumerate(messages):
        elems = [MM_SLOTS["system"].replace("{{content}}", system, 1)] if i == 0 else []
        elems.append(MM_SLOTS[m["role"]].replace("{{content}}", m["content"], 1))
        enc.append([t for e in elems if e for t in tok.encode(e, add_special_tokens=False)])
    return enc


def mm_supervised(tok, messages, cutoff, system=None, train_on_prompt=False, mask_history=False):
    """SupervisedDatasetProcessor._encode_data_example (qwen2vl: no efficient_eos)."""
    enc = mm_encode(tok, messages, system)
    pairs = [(enc[i], enc[i + 1]) for i in range(0, len(enc), 2)]
    if mask_history:
        pairs = pairs[::-1]
    input_ids, labels, total = [], [], 0
    for turn_idx, (src, tgt) in enumerate(pairs):
        if total >= cutoff:
            break
        sl, tl = mm_infer_seqlen(len(src), len(tgt), cutoff - total)
        src, tgt = src[:sl], tgt[:tl]
        total += sl + tl
        src_label = src if train_on_prompt else [IGNORE] * sl
        tgt_label = [IGNORE] * tl if mask_history and turn_idx != 0 else tgt
        if mask_history:
            input_ids, labels = src + tgt + input_ids, src_label + tgt_label + labels
        else:
            input_ids, labels = input_ids + src + tgt, labels + src_label + tgt_label
    return input_ids, labels


def mm_pairwise(tok, prompt, chosen, rejected, cutoff):
    """PairwiseDatasetProcessor._encode_data_example."""
    c = mm_encode(tok, prompt + [chosen])
    r = mm_encode(tok, prompt + [rejected])
    prompt_ids = [t for ids in c[:-1] for t in ids]
    sl, tl = mm_infer_seqlen(len(prompt_ids), max(len(c[-1]), len(r[-1])), cutoff)
    p, ci, ri = prompt_ids[:sl], c[-1][:tl], r[-1][:tl]
    return p + ci, [IGNORE] * sl + ci, p + ri, [IGNORE] * sl + ri


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir)


def hf_tokens(images, **limits):
    """Merged-token count per image from transformers' processor."""
    grid = HFImageProcessor(**limits)(images=images, return_tensors="np")["image_grid_thw"]
    return [int(np.prod(g)) // 4 for g in grid]


def ours(tok, messages, image_tokens, cutoff, **kw):
    return Qwen2VLTemplate(tok).encode_supervised(mm_expand(messages, image_tokens), cutoff_len=cutoff, **kw)


# ---------------------------------------------------------------- pre-resize
PRE_RESIZE_CASES = [  # (image, max_pixels, min_pixels)
    ("rgb_20x30", lambda: rgb(20, 30, seed=1), 262144, 0),
    ("rgb_30x20", lambda: rgb(30, 20, seed=2), 262144, 0),
    ("rgb_6000x28", lambda: rgb(6000, 28, seed=3), 10 ** 7, 0),
    ("rgb_28x6000", lambda: rgb(28, 6000, seed=4), 10 ** 7, 0),
    ("rgb_9000x40_rescaled_first", lambda: rgb(9000, 40, seed=5), 262144, 0),
    ("rgb_12x12_min_pixels", lambda: rgb(12, 12, seed=6), 262144, 20 * 20),
    ("rgb_5000x21_both", lambda: rgb(5000, 21, seed=7), 10 ** 7, 0),
    ("P_16x50", lambda: in_mode(rgb(16, 50, seed=8), "P"), 262144, 0),
    ("RGBA_25x25", lambda: in_mode(rgb(25, 25, seed=9), "RGBA"), 262144, 0),
    ("L_7x300", lambda: in_mode(rgb(7, 300, seed=10), "L"), 262144, 0),
]


@pytest.mark.parametrize("name,make,max_pixels,min_pixels", PRE_RESIZE_CASES, ids=[c[0] for c in PRE_RESIZE_CASES])
def test_pre_resize_equals_mindspeed_mm(name, make, max_pixels, min_pixels):
    got = pre_resize(make(), max_pixels, min_pixels)
    want = mm_preprocess_image(make(), max_pixels, min_pixels)
    assert got.mode == "RGB" and got.size == want.size
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_pre_resize_size_rules_do_not_use_nearest():
    """The sizes of the issue: 20x30 -> 28x30 and 6000x28 -> 5040x28 with PIL's default filter
    (BICUBIC here), which the earlier NEAREST resize does not reproduce."""
    for img, size in ((rgb(20, 30, seed=1), (28, 30)), (rgb(6000, 28, seed=3), (5040, 28))):
        got = pre_resize(img, 10 ** 7, 0)
        assert got.size == size
        np.testing.assert_array_equal(np.asarray(got), np.asarray(img.resize(size, Image.BICUBIC)))
        assert not np.array_equal(np.asarray(got), np.asarray(img.resize(size, Image.NEAREST)))


def test_pixel_count_rescale_stays_nearest():
    img = rgb(1000, 700, seed=11)
    got = pre_resize(img, 262144, 0)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(img.resize(got.size, Image.NEAREST)))


# ---------------------------------------------------------------- template slots
def test_function_and_observation_turns_equal_mindspeed_mm(tok):
    messages = [{"role": "user", "content": "<image>What is the weather in Paris?"},
                {"role": "function", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                {"role": "observation", "content": '{"temp": 21, "sky": "clear"}'},
                {"role": "assistant", "content": "It is 21 degrees and clear."},
                {"role": "user", "content": "And tomorrow?"},
                {"role": "function", "content": '{"name": "forecast", "arguments": {"days": 1}}'}]
    n = hf_tokens([rgb(60, 40)])
    for kw in ({}, {"train_on_prompt": True}, {"mask_history": True}):
        got = ours(tok, messages, n, None, system="Use tools.", **kw)
        assert got == mm_supervised(tok, mm_expand(messages, n), 10 ** 9, system="Use tools.", **kw), kw
    ids, labels = got
    # a function turn is its content alone: its last label is the closing brace, not <|im_end|>\n
    tail = tok.encode('{"name": "forecast", "arguments": {"days": 1}}', add_special_tokens=False)
    assert ids[-len(tail):] == tail and labels[-len(tail):] == tail


# ---------------------------------------------------------------- truncation
def _conv(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_prompt_heavy_with_image_equals_mindspeed_mm(tok):
    """The cut falls in the text after the image: MindSpeed-MM's split of the budget, exactly."""
    msgs = _conv("<image>" + " describe the scene in detail" * 60, " A red square on blue." * 25)
    n = hf_tokens([rgb(224, 224)])
    for cutoff in (200, 256, 290, 400):
        want = mm_supervised(tok, mm_expand(msgs, n), cutoff)
        got = ours(tok, msgs, n, cutoff)
        assert got == want and len(got[0]) == cutoff
        assert got[0].count(IMAGE_PAD) == n[0]
        if cutoff < 2 * len(mm_encode(tok, mm_expand(msgs, n))[1]):  # both sides are cut
            # less prompt kept, more answer trained than with the vision tokens reserved first
            assert sum(x != IGNORE for x in got[1]) > _vision_first_answer_tokens(tok, msgs, n, cutoff)


def test_answer_heavy_with_image_equals_mindspeed_mm(tok):
    msgs = _conv("<image>" + " question" * 200, " answer word" * 400)
    n = hf_tokens([rgb(112, 112)])
    for cutoff in (320, 400, 512):
        want = mm_supervised(tok, mm_expand(msgs, n), cutoff)
        got = ours(tok, msgs, n, cutoff)
        assert got == want
        assert got[0].count(IMAGE_PAD) == n[0]
        if cutoff < 2 * len(mm_encode(tok, mm_expand(msgs, n))[0]):  # both sides are cut
            # more answer tokens are trained than with the vision tokens reserved first
            assert sum(x != IGNORE for x in got[1]) > _vision_first_answer_tokens(tok, msgs, n, cutoff)


def _vision_first_answer_tokens(tok, msgs, n, cutoff):
    """The answer tokens the earlier rule kept: budget = cutoff - vision tokens, split on text only."""
    enc = mm_encode(tok, mm_expand(msgs, n))
    vision = n[0] + 2
    return mm_infer_seqlen(len(enc[0]) - vision, len(enc[1]), cutoff - vision)[1]


def test_multi_turn_mask_history_and_train_on_prompt_equal_mindspeed_mm(tok):
    msgs = (_conv("<image>First, what is this?", " It is a test picture." * 10)
            + _conv("More" * 30, " Second answer." * 20) + _conv("Last question?", " Final answer." * 25))
    n = hf_tokens([rgb(56, 56)])
    for cutoff in (120, 180, 260, 10 ** 6):
        for kw in ({}, {"train_on_prompt": True}, {"mask_history": True}):
            want = mm_supervised(tok, mm_expand(msgs, n), cutoff, **kw)
            if want[0].count(IMAGE_PAD) != n[0]:
                continue  # MindSpeed-MM's cut drops image tokens here: see the test below
            assert ours(tok, msgs, n, cutoff, **kw) == want, (cutoff, kw)


def test_vision_block_kept_only_where_mindspeed_mm_would_cut_it(tok):
    """An image at the end of a long prompt: MindSpeed-MM's cut keeps the prompt's head and falls
    inside the vision block; ours keeps the whole block and cuts the text instead (documented)."""
    msgs = _conv(" context" * 150 + "<image>", " The answer." * 40)
    n = hf_tokens([rgb(224, 224)])
    inside = [c for c in range(100, 400) if 0 < mm_supervised(tok, mm_expand(msgs, n), c)[0].count(IMAGE_PAD) < n[0]]
    assert inside  # cutoffs where MindSpeed-MM's cut falls inside the vision block
    cutoff = inside[len(inside) // 2]
    ids, labels = ours(tok, msgs, n, cutoff)
    assert len(ids) == len(labels) <= cutoff
    s = ids.index(VSTART)
    assert ids[s:s + n[0] + 2] == [VSTART] + [IMAGE_PAD] * n[0] + [VEND]
    # the departure's rule: vision reserved, MindSpeed-MM's split applied to the text tokens
    enc = mm_encode(tok, mm_expand(msgs, n))
    text_src = [t for t in enc[0] if t not in (VSTART, VEND, IMAGE_PAD)]
    sl, tl = mm_infer_seqlen(len(text_src), len(enc[1]), cutoff - n[0] - 2)
    assert labels[len(ids) - tl:] == enc[1][:tl] and len(ids) == sl + tl + n[0] + 2
    # an image in a turn MindSpeed-MM's budget drops entirely is kept as well
    msgs2 = _conv("Hi" * 10, " long reply" * 200) + _conv("<image>and this?", "ok")
    ids2, _ = ours(tok, msgs2, n, 200)
    assert ids2.count(IMAGE_PAD) == n[0] and len(ids2) <= 200
    assert mm_supervised(tok, mm_expand(msgs2, n), 200)[0].count(IMAGE_PAD) == 0
    with pytest.raises(SkipSample):
        ours(tok, msgs, n, n[0])


def test_pairwise_truncation_equals_mindspeed_mm(tok):
    t = Qwen2VLTemplate(tok)
    n = hf_tokens([rgb(112, 112)])
    prompt = [{"role": "user", "content": "<image>" + " compare" * 100}]
    chosen = {"role": "assistant", "content": " good" * 150}
    rejected = {"role": "assistant", "content": " bad" * 90}
    for cutoff in (150, 220, 400):
        want = mm_pairwise(tok, mm_expand(prompt, n), chosen, rejected, cutoff)
        assert want[0].count(IMAGE_PAD) == n[0]
        assert list(t.encode_pairwise(mm_expand(prompt, n), chosen, rejected, cutoff_len=cutoff)) == list(want)


# ---------------------------------------------------------------- video without a frame count
def _write_mkv(path, n, w=64, h=48):
    """A lossless Matroska clip: Matroska stores no frame count (PyAV reports frames == 0).
    Frame i is flat grey level 20*i, so the decoded frame tells its index."""
    av = pytest.importorskip("av")
    with av.open(path, "w") as c:
        s = c.add_stream("ffv1", rate=4)
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 20 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with av.open(path) as c:
        assert c.streams.video[0].frames == 0
    return path


def _index(frame):
    return int(round(float(np.asarray(frame).mean()) / 20))


def test_video_without_frame_count_takes_first_maxlen_frames(tmp_path):
    path = _write_mkv(str(tmp_path / "clip.mkv"), 10)
    for maxlen in (4, 6, 16):
        got = [_index(f) for f in load_video_frames(path, fps=2.0, maxlen=maxlen)]
        want = [i for i in range(10) if i in mm_video_indices(0, None, 2.0, maxlen)]
        assert got == want
    # then MindSpeed-MM's padding to an even count and the video pre-resize
    reg = regularize_video(path, 2.0, 5, 16384, 0)
    assert [_index(f) for f in reg] == [0, 1, 2, 3, 4, 4]


def test_animated_png_and_gif_sampled_as_pyav_reports_them(tmp_path):
    """MindSpeed-MM opens every video with PyAV: an APNG has no frame count there (first maxlen
    frames), a GIF has one and a duration (floor(duration * fps) frames spread over it)."""
    av = pytest.importorskip("av")
    flat = [Image.fromarray(np.full((24, 32, 3), 20 * i, np.uint8)) for i in range(8)]
    apng, gif = str(tmp_path / "a.png"), str(tmp_path / "g.gif")
    flat[0].save(apng, save_all=True, append_images=flat[1:], duration=200, loop=0)
    flat[0].save(gif, save_all=True, append_images=flat[1:], duration=250, loop=0)
    for path in (apng, gif):
        with av.open(path) as c:
            st = c.streams.video[0]
            dur = float(st.duration * st.time_base) if st.duration else None
            want = [i for i in range(8) if i in mm_video_indices(st.frames, dur, 2.0, 4)]
        assert [_index(f) for f in load_video_frames(path, fps=2.0, maxlen=4)] == want
    # PyAV's frames hold the pixels PIL's reader gives (palette GIF and APNG of photo-like frames)
    from PIL import ImageSequence

    from helpers.images import frames

    photo = frames(4, 40, 30)
    for name in ("p.gif", "p.png"):
        path = str(tmp_path / name)
        photo[0].save(path, save_all=True, append_images=photo[1:], duration=500, loop=0)
        got = load_video_frames(path, fps=2.0, maxlen=8)
        ref = [f.convert("RGB") for f in ImageSequence.Iterator(Image.open(path))]
        assert len(got) == len(ref) == 4
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(np.asarray(g.convert("RGB")), np.asarray(r))


# ---------------------------------------------------------------- processor from the checkpoint
def _cfg(model_dir, data_dir, dataset):
    attr = {"images": "images", "messages": "messages", "role_tag": "role", "content_tag": "content",
            "user_tag": "user", "assistant_tag": "assistant"}
    return parse_data_config({"dataset_param": {
        "dataset_type": "huggingface",
        "preprocess_parameters": {"model_name_or_path": model_dir, "image_max_pixels": 262144, "image_min_pixels": 0},
        "basic_parameters": {"template": "qwen2vl", "dataset_dir": str(data_dir), "dataset": dataset},
        "attr": attr}, "dataloader_param": {"collate_param": {"model_name": "qwen2vl"}}}, "test_data.json")


def test_training_uses_the_checkpoints_preprocessor_config(tmp_path, tok_dir):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tok_dir, ckpt)
    cfg_file = ckpt / "preprocessor_config.json"
    pre = json.loads(cfg_file.read_text())
    pre.update(min_pixels=56 * 56, max_pixels=28 * 28 * 16)  # narrower than the released 12845056
    cfg_file.write_text(json.dumps(pre))
    data = tmp_path / "data"
    data.mkdir()
    write_image(str(data / "a.png"), 300, 200, seed=3)
    sample = {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A."}],
              "images": ["a.png"]}
    (data / "d.json").write_text(json.dumps([sample]))
    train, _ = build_datasets(_cfg(str(ckpt), data, str(data / "d.json")), 512)
    item = train[0]
    img = mm_preprocess_image(Image.open(data / "a.png"), 262144, 0)
    ref = HFImageProcessor.from_pretrained(str(ckpt))(images=[img], return_tensors="np")
    np.testing.assert_array_equal(item["image_grid_thw"], ref["image_grid_thw"])
    np.testing.assert_array_equal(item["pixel_values"], ref["pixel_values"])
    assert int((item["input_ids"] == IMAGE_PAD).sum()) == int(np.prod(ref["image_grid_thw"][0])) // 4
    default = HFImageProcessor()(images=[img], return_tensors="np")["image_grid_thw"]
    assert np.prod(ref["image_grid_thw"][0]) < np.prod(default[0])  # fewer patches than the defaults give
    cfg_file.write_text("{not json")
    with pytest.raises(DataError, match="preprocessor_config.json"):
        build_datasets(_cfg(str(ckpt), data, str(data / "d.json")), 512)


def test_missing_preprocessor_config_keeps_hf_defaults(tmp_path, tok_dir):
    from mindspeed_ms.data.dataset import checkpoint_processor

    cfg = _cfg(str(tmp_path), tmp_path, "x.json")
    assert not os.path.exists(tmp_path / "preprocessor_config.json")
    p = checkpoint_processor(cfg.preprocess_parameters)
    ref = HFImageProcessor()
    assert (p.min_pixels, p.max_pixels) == (ref.min_pixels, ref.max_pixels)


def _hf_video_processor_default_size():
    """transformers' Qwen2VLVideoProcessor.size, read from its source (importing it needs torchvision)."""
    import ast
    import importlib.util

    src = open(importlib.util.find_spec("transformers.models.qwen2_vl.video_processing_qwen2_vl").origin).read()
    cls = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    node = next(n for n in cls.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "size")
    return eval(compile(ast.Expression(node.value), "size", "eval"))  # noqa: S307 (a literal product)


@pytest.mark.parametrize("files", [
    {"preprocessor_config.json": {"min_pixels": 3136, "max_pixels": 12845056}},
    {"preprocessor_config.json": {"patch_size": 14}},  # no limits: the video processor keeps its own
    {"preprocessor_config.json": {"size": {"shortest_edge": 1000, "longest_edge": 50000}}},
    {"preprocessor_config.json": {"max_pixels": 9000},
     "video_preprocessor_config.json": {"min_pixels": 784, "max_pixels": 40000}},
], ids=["released", "no_limits", "size", "video_file"])
def test_video_pixel_limits_follow_transformers_video_processor(tmp_path, files):
    from transformers.video_processing_utils import BaseVideoProcessor

    from mindspeed_ms.data.dataset import checkpoint_processor

    for name, body in files.items():
        (tmp_path / name).write_text(json.dumps(body))
    # the file transformers' AutoVideoProcessor reads, then Qwen2VLVideoProcessor's size rule
    cfg = BaseVideoProcessor.get_video_processor_dict(str(tmp_path))[0]
    size = dict(cfg.get("size") or _hf_video_processor_default_size())
    size["shortest_edge"] = cfg.get("min_pixels", size["shortest_edge"])
    size["longest_edge"] = cfg.get("max_pixels", size["longest_edge"])
    p = checkpoint_processor(_cfg(str(tmp_path), tmp_path, "x.json").preprocess_parameters)
    assert (p.video_min_pixels, p.video_max_pixels) == (size["shortest_edge"], size["longest_edge"])
    ref = HFImageProcessor.from_pretrained(str(tmp_path))  # images: the image processor's limits
    if "size" not in cfg:
        assert (p.min_pixels, p.max_pixels) == (ref.min_pixels, ref.max_pixels)
    else:  # transformers' slow image processor ignores `size`; its fast one (MindSpeed-MM's) reads it
        assert (p.min_pixels, p.max_pixels) == (cfg["size"]["shortest_edge"], cfg["size"]["longest_edge"])
    frames = [rgb(200, 150, seed=i) for i in range(2)]
    grid = p(videos=[frames])["video_grid_thw"][0]
    want = HFImageProcessor(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])(
        images=None, videos=[frames], return_tensors="np")["video_grid_thw"][0]
    np.testing.assert_array_equal(grid, want)


def test_dataset_samples_equal_mindspeed_mm(tmp_path, tok_dir, tok):
    """Through build_datasets: a sharegpt tool conversation with a 20x30 and a 6000x28 image, and a
    video without a frame count: ids, labels, grids and pixels as MindSpeed-MM's path makes them."""
    data = tmp_path / "data"
    data.mkdir()
    write_image(str(data / "tiny.png"), 20, 30, seed=1)
    write_image(str(data / "wide.png"), 6000, 28, seed=2)
    _write_mkv(str(data / "clip.mkv"), 10)
    tool = {"messages": [{"from": "human", "value": "<image><image>Which tool?"},
                         {"from": "function_call", "value": '{"name": "zoom", "arguments": {"x": 2}}'},
                         {"from": "observation", "value": '{"ok": true}'},
                         {"from": "gpt", "value": "Zoomed in."}], "images": ["tiny.png", "wide.png"]}
    video = {"messages": [{"from": "human", "value": "<video>What changes?"}, {"from": "gpt", "value": "Brightness."}],
             "videos": ["clip.mkv"]}
    (data / "d.json").write_text(json.dumps([tool, video]))
    cfg = parse_data_config({"dataset_param": {
        "dataset_type": "huggingface",
        "preprocess_parameters": {"model_name_or_path": tok_dir, "image_max_pixels": 262144, "image_min_pixels": 0,
                                  "video_max_pixels": 16384, "video_min_pixels": 0, "video_fps": 2.0,
                                  "video_maxlen": 4},
        "basic_parameters": {"template": "qwen2vl", "dataset_dir": str(data), "dataset": str(data / "d.json")},
        "attr": {"images": "images", "videos": "videos", "messages": "messages", "role_tag": "from",
                 "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}},
        "dataloader_param": {"collate_param": {"model_name": "qwen2vl"}}}, "test_data.json")
    train, _ = build_datasets(cfg, 8192)
    hf = HFImageProcessor.from_pretrained(tok_dir)
    roles = {"human": "user", "gpt": "assistant", "function_call": "function", "observation": "observation"}

    imgs = [mm_preprocess_image(Image.open(data / n), 262144, 0) for n in ("tiny.png", "wide.png")]
    ref = hf(images=imgs, return_tensors="np")
    msgs = [{"role": roles[m["from"]], "content": m["value"]} for m in tool["messages"]]
    n_img = [int(np.prod(g)) // 4 for g in ref["image_grid_thw"]]
    ids, labels = mm_supervised(tok, mm_expand(msgs, n_img), 8192)
    item = train[0]
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    np.testing.assert_array_equal(item["image_grid_thw"], ref["image_grid_thw"])
    np.testing.assert_array_equal(item["pixel_values"], ref["pixel_values"])

    import av

    with av.open(str(data / "clip.mkv")) as c:
        st = c.streams.video[0]
        keep = mm_video_indices(st.frames, None, 2.0, 4)
        frames = [f.to_image() for i, f in enumerate(c.decode(st)) if i in keep]
    frames = frames + frames[-1:] if len(frames) % 2 else frames
    frames = [mm_preprocess_image(f, 16384, 0) for f in frames]
    vref = hf(images=None, videos=[frames], return_tensors="np")
    vmsgs = [{"role": roles[m["from"]], "content": m["value"]} for m in video["messages"]]
    ids, labels = mm_supervised(tok, mm_expand(vmsgs, [], [int(np.prod(vref["video_grid_thw"][0])) // 4]), 8192)
    item = train[1]
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    np.testing.assert_array_equal(item["video_grid_thw"], vref["video_grid_thw"])
    np.testing.assert_array_equal(item["pixel_values_videos"], vref["pixel_values_videos"])
