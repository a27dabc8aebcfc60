"""`mindspeed_ms.data.Qwen2VLProcessor` == transformers' `Qwen2VLProcessor`: chat template text,
input ids, attention mask, pixel values and grids on varied inputs (odd sizes, several images per
prompt, a padded batch, grey/RGBA images, a video with an image, pixel limits), tokenized chat
templates and decoding.

transformers' video processor (`Qwen2VLVideoProcessor`) needs torchvision, which is not installed
here; the reference processor therefore takes its videos from transformers'
`Qwen2VLImageProcessor` video path (the one transformers used before the split)."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
from mindspeed_ms.data import Qwen2VLProcessor  # noqa: E402
from mindspeed_ms.tools.build_tokenizer import build_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    import transformers.processing_utils as pu
    from transformers import AutoTokenizer
    from transformers import Qwen2VLImageProcessor as HFImageProcessor
    from transformers import Qwen2VLProcessor as HFProcessor

    d = str(tmp_path_factory.mktemp("proc"))
    build_tokenizer(d, None, with_processor=True)
    ip = HFImageProcessor.from_pretrained(d)

    class VideoViaImageProcessor:
        merge_size = ip.merge_size

        def __call__(self, videos, **kw):
            return ip(images=None, videos=videos, **kw)

    check = pu.ProcessorMixin.check_argument_for_proper_class
    pu.ProcessorMixin.check_argument_for_proper_class = (
        lambda self, name, arg: None if name == "video_processor" else check(self, name, arg))
    try:
        with open(os.path.join(d, "chat_template.json"), encoding="utf-8") as f:
            template = json.load(f)["chat_template"]
        ref = HFProcessor(image_processor=ip, tokenizer=AutoTokenizer.from_pretrained(d),
                          video_processor=VideoViaImageProcessor(), chat_template=template)
    finally:
        pu.ProcessorMixin.check_argument_for_proper_class = check
    return Qwen2VLProcessor.from_pretrained(d), ref, d


def _img(rng, w, h, mode="RGB"):
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return im.convert(mode) if mode != "RGB" else im


def _same(ours, ref):
    assert set(ours) == set(ref), (sorted(ours), sorted(ref))
    for k in ref:
        a, b = np.asarray(ours[k]), np.asarray(ref[k])
        assert a.shape == b.shape, k
        if k.startswith("pixel_values"):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # a one-level pixel difference is ~1e-2
        else:
            np.testing.assert_array_equal(a, b)


def _messages(*parts_per_turn):
    msgs = []
    for i, parts in enumerate(parts_per_turn):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": parts})
    return msgs


def test_one_image_chat_template_and_processor(procs):
    ours, ref, _ = procs
    rng = np.random.default_rng(0)
    msgs = _messages([{"type": "image"}, {"type": "text", "text": "What is in the picture?"}])
    text = ours.apply_chat_template(msgs, add_generation_prompt=True)
    assert text == ref.apply_chat_template(msgs, add_generation_prompt=True)
    img = _img(rng, 98, 70)
    _same(ours(text=[text], images=[img], return_tensors="np"), ref(text=[text], images=[img], return_tensors="np"))


def test_padded_batch_several_images_vision_ids(procs):
    ours, ref, _ = procs
    rng = np.random.default_rng(1)
    c1 = _messages([{"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}],
                   "They differ.", [{"type": "text", "text": "And this one?"}, {"type": "image"}])
    c2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "image"},
                                                                                  {"type": "text", "text": "Colour?"}]}]
    kw = dict(add_generation_prompt=True, add_vision_id=True)
    texts = ours.apply_chat_template([c1, c2], **kw)
    assert texts == ref.apply_chat_template([c1, c2], **kw)
    assert "Picture 3:" in texts[0]
    images = [_img(rng, 57, 300), _img(rng, 640, 31, "RGBA"), _img(rng, 200, 200, "L"), _img(rng, 29, 29, "P")]
    call = dict(text=texts, images=images, padding=True, padding_side="left", return_tensors="np")
    out = ours(**call)
    _same(out, ref(**call))
    assert out["attention_mask"][1, 0] == 0  # the shorter prompt is left-padded
    limits = dict(call, min_pixels=28 * 28 * 8, max_pixels=28 * 28 * 20)
    _same(ours(**limits), ref(**limits))


def test_video_and_image_together_and_lists_without_tensors(procs):
    ours, ref, _ = procs
    rng = np.random.default_rng(2)
    msgs = _messages([{"type": "video"}, {"type": "image"}, {"type": "text", "text": "Same scene?"}])
    text = ours.apply_chat_template(msgs, add_generation_prompt=True)
    video = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(5)]
    img = _img(rng, 80, 60)
    call = dict(text=text, images=[img], videos=[video], return_tensors="np")
    out = ours(**call)
    _same(out, ref(**call))
    assert out["video_grid_thw"][0, 0] == 3  # 5 frames, temporal patch 2: the last frame repeated
    plain = ours(text=["hello there", "a longer piece of text"])
    assert plain["input_ids"] == ref(text=["hello there", "a longer piece of text"])["input_ids"]
    assert isinstance(plain["input_ids"], list)


def test_tokenized_chat_template_and_decode(procs, tmp_path):
    ours, ref, _ = procs
    rng = np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate(((64, 48), (33, 90))):
        p = tmp_path / f"im{i}.png"
        _img(rng, w, h).save(p)
        paths.append(str(p))
    msgs = _messages([{"type": "image", "image": paths[0]}, {"type": "text", "text": "and"},
                      {"type": "image", "path": paths[1]}, {"type": "text", "text": "?"}])
    out = ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                   return_tensors="np")
    want = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                   return_tensors="np")
    _same(out, {k: want[k] for k in want})
    ids = out["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(ids, skip_special_tokens=True)
    assert ours.decode(ids[0]) == ref.decode(ids[0])


def test_template_from_tokenizer_config_and_errors(procs, tmp_path):
    ours, ref, d = procs
    only_tok = tmp_path / "only_tokenizer_config"
    shutil.copytree(d, only_tok)
    os.remove(only_tok / "chat_template.json")
    p = Qwen2VLProcessor.from_pretrained(str(only_tok))
    msgs = _messages("hi")
    assert p.apply_chat_template(msgs, add_generation_prompt=True) == ref.apply_chat_template(
        msgs, add_generation_prompt=True)
    cfg = json.loads((only_tok / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (only_tok / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no chat template"):
        Qwen2VLProcessor.from_pretrained(str(only_tok)).apply_chat_template(msgs)
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="1 <\\|image_pad\\|> token.*2 image"):
        ours(text="<|image_pad|>", images=[_img(rng, 30, 30), _img(rng, 30, 30)])
    with pytest.raises(ValueError, match="numpy"):
        ours(text="x", return_tensors="pt")
    with pytest.raises(ValueError, match="padding=True"):
        ours(text=["a", "a b c d"], return_tensors="np")
