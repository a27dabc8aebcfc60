"""Our Qwen2VLImageProcessor equals transformers' Qwen2VLImageProcessor (pixel_values, grids) on
varied images and videos; MindSpeed-MM's pre-resize and frame sampling rules."""
import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessor as HFProcessor

from helpers.images import frames, in_mode, rgb, varied_images, write_gif
from mindspeed_ms.data import Qwen2VLImageProcessor, smart_resize
from mindspeed_ms.data.image_io import (MediaError, load_image, load_video_frames, pre_resize, regularize_video,
                                        sample_indices, to_rgb)

LIMITS = [dict(min_pixels=3136, max_pixels=12845056), dict(min_pixels=32 * 32, max_pixels=256 * 256)]


def _hf_input(img):
    # HF clips 16-bit to 255 through PIL; we rescale (documented in image_io.to_rgb), so HF gets our RGB.
    return to_rgb(img) if img.mode.startswith("I") else img


@pytest.mark.parametrize("path", ["compiled", "pil"])
@pytest.mark.parametrize("limits", LIMITS, ids=["released", "small"])
def test_images_equal_hf(limits, path):
    imgs = varied_images()
    assert len(imgs) >= 30
    ours, ref = Qwen2VLImageProcessor(**limits), HFProcessor(**limits)
    assert ours._compiled  # numba is a dependency: the default processor takes the compiled resize
    if path == "pil":
        ours.__dict__["_compiled"] = False  # PIL's resize + numpy (other patch sizes, no numba)
    for name, img in imgs:
        if max(img.size) / min(img.size) > 200:
            with pytest.raises(ValueError, match="aspect ratio"):
                ours(images=[img])
            continue
        a = ours(images=[img], return_tensors="np")
        b = ref(images=[_hf_input(img)], return_tensors="np", input_data_format="channels_last")
        assert a["pixel_values"].dtype == np.float32
        assert a["pixel_values"].shape == b["pixel_values"].shape, name
        np.testing.assert_array_equal(a["image_grid_thw"], b["image_grid_thw"], err_msg=name)
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"], err_msg=name)  # bit-identical


def _pil_coefficients(in_size, out_size):
    """Resample.c's precompute_coeffs + normalize_coeffs_8bpc (bicubic), as its scalar loops."""
    def bicubic(x):
        x = abs(x)
        return (1.5 * x - 2.5) * x * x + 1 if x < 1.0 else ((((x - 5) * x + 8) * x - 4) * -0.5 if x < 2.0 else 0.0)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    bounds, taps = [], []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [bicubic((x + xmin - center + 0.5) * (1.0 / filterscale)) for x in range(xmax)]
        ww = 0.0
        for v in w:
            ww += v
        w = [v / ww if ww != 0.0 else v for v in w]
        taps.append([int(-0.5 + v * (1 << 22)) if v < 0 else int(0.5 + v * (1 << 22)) for v in w])
        bounds.append((xmin, xmax))
    return bounds, taps


def test_compiled_resize_coefficients_equal_pil_loops():
    """The vectorized coefficients equal Resample.c's loops on up-, down- and strong down-scales."""
    from mindspeed_ms.data.resample import bicubic_coefficients

    rng = np.random.default_rng(5)
    for a, b in [(10, 56), (3000, 28), (1500, 1484), (40, 56), (2000, 700), (7, 7)] + \
            [tuple(int(v) for v in rng.integers(1, 2500, 2)) for _ in range(40)]:
        bounds, taps = bicubic_coefficients(a, b)
        want_bounds, want_taps = _pil_coefficients(a, b)
        assert bounds.tolist() == [list(x) for x in want_bounds], (a, b)
        for row, want, (_, n) in zip(taps.tolist(), want_taps, want_bounds):
            assert row[:n] == want and not any(row[n:]), (a, b)


def test_compiled_resize_equals_pil_on_random_sizes():
    """The compiled resize + layout equals PIL's resize reordered, in every pass order, including
    strips of merge-block rows computed on their own (what threads run)."""
    from mindspeed_ms.data import resample
    from mindspeed_ms.data.processor import _vertical_first

    rng = np.random.default_rng(6)
    levels = np.tile(np.arange(256, dtype=np.float32), (3, 1))
    orders = set()
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        nh, nw = (28 * int(v) for v in rng.integers(1, 12, 2))
        if i % 6 == 0:
            h = nh
        if i % 7 == 0:
            w = nw
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        order = resample.pass_order(w, h, nw, nh, _vertical_first(w, h, nw, nh))
        orders.add(order)
        want = np.asarray(Image.fromarray(src).resize((nw, nh), Image.BICUBIC))
        want = want.reshape(nh // 28, 2, 14, nw // 28, 2, 14, 3).transpose(0, 3, 1, 4, 6, 2, 5)
        want = np.stack([want, want], 5).reshape(nh // 28, -1)
        got = np.empty(nh * nw * 6, np.float32)
        resample.resize_to_patches(src, nh, nw, order, levels, got)
        np.testing.assert_array_equal(got.reshape(nh // 28, -1), want, err_msg=f"{w}x{h}->{nw}x{nh}")
        lo = int(rng.integers(0, nh // 28))
        part = np.full(nh * nw * 6, -1, np.float32)
        resample.resize_to_patches(src, nh, nw, order, levels, part, 28 * lo, 28 * (lo + 1))
        np.testing.assert_array_equal(part.reshape(nh // 28, -1)[lo], want[lo])
        assert (np.delete(part.reshape(nh // 28, -1), lo, 0) == -1).all()  # nothing outside the strip
    from mindspeed_ms.data.processor import _pil_pass_order
    assert orders == set(range(5)) if _pil_pass_order() == "pillow13" else orders == set(range(5)) - {resample.V_THEN_H}


# Sizes that take every path of the threaded resize: both passes (horizontal first / vertical first,
# PIL's order), width only, height only, no resize; all large enough for several threads.
THREAD_CASES = [(2000, 1500), (640, 480), (550, 1012), (710, 560), (700, 570), (700, 560), (1500, 2000), (2400, 300)]


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_images_bit_identical_to_hf(threads, monkeypatch):
    from mindspeed_ms.data import processor
    from mindspeed_ms.data.processor import _vertical_first

    # every case split into strips, whatever the speed threshold is tuned to
    monkeypatch.setattr(processor, "_PIXELS_PER_THREAD", 50_000)
    ours, ref = Qwen2VLImageProcessor(num_threads=threads), HFProcessor()
    orders = set()
    for i, (w, h) in enumerate(THREAD_CASES):
        img = rgb(w, h, seed=i)
        rh, rw = smart_resize(h, w, 28, 56 * 56, 28 * 28 * 1280)
        if rw != w and rh != h:
            orders.add(_vertical_first(w, h, rw, rh))
        a = ours(images=[img])
        b = ref(images=[img], return_tensors="np", input_data_format="channels_last")
        np.testing.assert_array_equal(a["image_grid_thw"], b["image_grid_thw"])
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"], err_msg=f"{w}x{h}")
        single = Qwen2VLImageProcessor(num_threads=1)(images=[img])["pixel_values"]
        np.testing.assert_array_equal(a["pixel_values"], single)
    from mindspeed_ms.data.processor import _pil_pass_order
    if _pil_pass_order() == "pillow13":
        assert orders == {False, True}  # both of PIL's pass orders were exercised


def test_pil_pass_order_matches_pil_resize():
    """The pass order we replicate is PIL's own on random sizes (not only on the probe's)."""
    from mindspeed_ms.data.processor import _pil_pass_order, _vertical_first

    assert _pil_pass_order() in ("pillow13", "horizontal")
    rng = np.random.default_rng(3)
    for _ in range(40):
        w, h, nw, nh = (int(v) for v in rng.integers(8, 160, 4))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        first = img.resize((w, nh) if _vertical_first(w, h, nw, nh) else (nw, h), Image.BICUBIC)
        np.testing.assert_array_equal(np.asarray(first.resize((nw, nh), Image.BICUBIC)),
                                      np.asarray(img.resize((nw, nh), Image.BICUBIC)), err_msg=f"{w}x{h}->{nw}x{nh}")


@pytest.mark.parametrize("limits", [dict(max_pixels=0), dict(min_pixels=-1), dict(min_pixels=10 ** 6, max_pixels=10 ** 5)])
def test_rejects_impossible_pixel_limits(limits):
    with pytest.raises(ValueError, match="need 0 <= min_pixels <= max_pixels"):
        Qwen2VLImageProcessor(**limits)(images=[rgb(64, 48, 1)])
    with pytest.raises(ValueError, match="need 0 <= min_pixels <= max_pixels"):
        Qwen2VLImageProcessor()(images=[rgb(64, 48, 1)], **limits)


@pytest.mark.parametrize("threads", [0, -2])
def test_rejects_thread_counts_below_one(threads):
    with pytest.raises(ValueError, match=f"num_threads={threads}"):
        Qwen2VLImageProcessor(num_threads=threads)


def test_threaded_file_image(tmp_path):
    path = tmp_path / "big.png"
    rgb(900, 700, seed=7).save(path)
    a = Qwen2VLImageProcessor(num_threads=2)(images=[str(path)])
    b = HFProcessor()(images=[Image.open(path)], return_tensors="np", input_data_format="channels_last")
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])


def test_batch_of_images_and_arrays_equal_hf():
    imgs = [rgb(64, 48, 1), rgb(300, 120, 2), rgb(28, 28, 3)]
    a = Qwen2VLImageProcessor()(images=imgs)
    b = HFProcessor()(images=imgs, return_tensors="np")
    np.testing.assert_array_equal(a["image_grid_thw"], b["image_grid_thw"])
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    arr = Qwen2VLImageProcessor()(images=[np.asarray(im) for im in imgs])
    np.testing.assert_array_equal(arr["pixel_values"], a["pixel_values"])


@pytest.mark.parametrize("path", ["compiled", "pil"])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_videos_equal_hf(n, path):
    vids = [frames(n, 96, 64, seed=n), frames(2, 200, 150, seed=50), frames(3, 112, 56, seed=9)]  # last: no resize
    ours = Qwen2VLImageProcessor()
    if path == "pil":
        ours.__dict__["_compiled"] = False
    a = ours(videos=vids)
    b = HFProcessor()(images=None, videos=vids, return_tensors="np")
    np.testing.assert_array_equal(a["video_grid_thw"], b["video_grid_thw"])
    assert a["video_grid_thw"][0, 0] == (n + 1) // 2  # odd counts padded with the last frame
    np.testing.assert_array_equal(a["pixel_values_videos"], b["pixel_values_videos"])


def test_images_and_videos_together():
    a = Qwen2VLImageProcessor()(images=[rgb(50, 60)], videos=[frames(4)])
    assert set(a) == {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"}
    assert a["pixel_values"].shape[0] == a["image_grid_thw"].prod()


def test_smart_resize_equals_hf():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = int(rng.integers(1, 5000)), int(rng.integers(1, 5000))
        if max(h, w) / min(h, w) > 200:
            continue
        lo, hi = int(rng.integers(1, 10 ** 5)), int(rng.integers(10 ** 5, 10 ** 7))
        assert smart_resize(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi)


def test_mode_conversion():
    img = rgb(40, 30)
    for mode in ("RGBA", "LA", "L", "1", "P", "CMYK", "I;16"):
        out = to_rgb(in_mode(img, mode))
        assert out.mode == "RGB" and out.size == img.size
    g16 = in_mode(img, "I;16")
    np.testing.assert_array_equal(np.asarray(to_rgb(g16))[..., 0], np.asarray(img.convert("L")))
    f = Image.fromarray(np.full((4, 4), 0.5, np.float32))
    assert np.asarray(to_rgb(f))[0, 0, 0] == 128


def test_pre_resize_rules():
    assert pre_resize(rgb(1000, 1000), 262144, 0).size == (512, 512)
    assert pre_resize(rgb(10, 10), 10 ** 6, 32 * 32).size == (32, 32)
    assert pre_resize(rgb(10, 100), 10 ** 6, 0).size == (28, 100)
    assert pre_resize(rgb(6000, 28), 10 ** 7, 0).size == (28 * 180, 28)
    assert pre_resize(rgb(28, 6000), 10 ** 7, 0).size == (28, 28 * 180)
    assert pre_resize(in_mode(rgb(64, 64), "P"), 10 ** 6, 0).mode == "RGB"
    # after the pre-resize every image is accepted by smart_resize (aspect <= 200)
    for name, img in varied_images():
        w, h = pre_resize(img, 768 * 768, 32 * 32).size
        smart_resize(h, w, 28, 3136, 12845056)


def test_sample_indices():
    np.testing.assert_array_equal(sample_indices(100, 10.0, 2.0, 128), np.linspace(0, 99, 20).astype(int))
    assert len(sample_indices(100, 10.0, 2.0, 8)) == 8
    assert len(sample_indices(5, 10.0, 2.0, 128)) == 5
    assert len(sample_indices(30, 0.1, 2.0, 128)) == 1
    assert len(sample_indices(7, None, 2.0, 4)) == 4


def test_video_sources(tmp_path):
    gif = write_gif(str(tmp_path / "v.gif"), 10, duration_ms=250)  # 2.5 s at 2 fps -> 5 frames
    fr = load_video_frames(gif, fps=2.0, maxlen=128)
    assert len(fr) == 5
    reg = regularize_video(gif, 2.0, 128, 128 * 128, 0)
    assert len(reg) == 6 and all(f.mode == "RGB" for f in reg)
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames(6)):
        f.save(d / f"{i:03d}.png")
    assert len(load_video_frames(str(d), 2.0, 4)) == 4
    out = Qwen2VLImageProcessor()(videos=[str(d)], video_maxlen=128)
    ref = HFProcessor()(images=None, videos=[frames(6)], return_tensors="np")
    np.testing.assert_array_equal(out["pixel_values_videos"], ref["pixel_values_videos"])


def test_video_file_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "v.mp4")
    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for f in frames(30):
            for p in s.encode(av.VideoFrame.from_image(f)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    fr = load_video_frames(path, fps=2.0, maxlen=128)
    assert len(fr) == 6 and fr[0].size == (96, 64)
    assert len(load_video_frames(path, fps=2.0, maxlen=4)) == 4


def test_bad_media(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        load_image(str(tmp_path / "missing.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(MediaError, match="bad.jpg"):
        load_image(str(bad))
    buf = tmp_path / "trunc.png"
    rgb(200, 200).save(buf)
    buf.write_bytes(buf.read_bytes()[:500])
    with pytest.raises(MediaError, match="trunc.png"):
        load_image(str(buf))
    with pytest.raises(MediaError, match="video not found"):
        load_video_frames(str(tmp_path / "nope.mp4"))


def test_benchmark_smoke(capsys):
    import importlib.util
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "preprocess_throughput.py")
    spec = importlib.util.spec_from_file_location("preprocess_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["identical"] and summary["images"] == 5


# Processor settings that take each normalization path: the float32 `x / 255` form (default), the
# float32 `x * factor` or table lookup (factors where float32 division is not exact), no rescale,
# no normalize, other mean/std, an odd patch size.
LEVEL_CASES = [dict(), dict(rescale_factor=0.00392), dict(rescale_factor=1 / 256), dict(do_rescale=False),
               dict(do_normalize=False), dict(do_rescale=False, do_normalize=False),
               dict(image_mean=[0.5, 0.25, 0.125], image_std=[0.3, 0.7, 0.11]), dict(patch_size=15, merge_size=2)]


@pytest.mark.parametrize("cfg", LEVEL_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_normalization_paths_equal_hf(cfg):
    ours, ref = Qwen2VLImageProcessor(**cfg), HFProcessor(**cfg)
    assert ours._level_steps is not None or cfg.get("rescale_factor") == 0.00392
    for i, (w, h) in enumerate([(300, 200), (61, 913), (1000, 700)]):
        img = rgb(w, h, seed=40 + i)
        a = ours(images=[img])
        b = ref(images=[img], return_tensors="np", input_data_format="channels_last")
        np.testing.assert_array_equal(a["image_grid_thw"], b["image_grid_thw"])
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"], err_msg=f"{cfg} {w}x{h}")
    vids = [frames(3, 120, 90, seed=9)]
    a, b = ours(videos=vids), ref(images=None, videos=vids, return_tensors="np")
    np.testing.assert_array_equal(a["pixel_values_videos"], b["pixel_values_videos"], err_msg=f"{cfg} video")


def test_level_steps_exact_on_every_level():
    """The chosen float32 arithmetic reproduces HF's table on all 256 levels (the construction check),
    and a factor with no exact float32 form gets none (then the table is used)."""
    from mindspeed_ms.data.processor import _apply_steps

    proc = Qwen2VLImageProcessor()
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=1)
    got = np.empty(levels.shape, np.float32)
    _apply_steps(proc._level_steps, levels, got)
    np.testing.assert_array_equal(got[:, :, 0].T, proc._lut)
    assert Qwen2VLImageProcessor(rescale_factor=0.00392)._level_steps is None


def test_video_frames_of_different_sizes_without_resize_are_an_error():
    with pytest.raises(ValueError, match="video frame 1 is 84x56, frame 0 is 56x56"):
        Qwen2VLImageProcessor(do_resize=False)(videos=[[rgb(56, 56, 1), rgb(84, 56, 2)]])


def test_compiled_resize_failure_falls_back_to_pil(monkeypatch):
    """A numba that cannot compile here leaves a working processor (PIL's resize, same output)."""
    from mindspeed_ms.data import processor

    def broken():
        raise RuntimeError("llvmlite mismatch")

    monkeypatch.setattr(processor, "_compiled_resize_agrees", broken)
    processor._compiled_resize_matches_pil.cache_clear()
    try:
        with pytest.warns(UserWarning, match="compiled image resize unavailable.*llvmlite mismatch"):
            ours = Qwen2VLImageProcessor()
            assert not ours._compiled
        img = rgb(300, 200, 4)
        np.testing.assert_array_equal(ours(images=[img])["pixel_values"],
                                      HFProcessor()(images=[img], return_tensors="np")["pixel_values"])
    finally:
        processor._compiled_resize_matches_pil.cache_clear()
