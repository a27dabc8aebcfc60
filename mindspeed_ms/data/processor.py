"""Qwen2-VL image/video processor in numpy + PIL (no torch), equal to HF's `Qwen2VLImageProcessor`.

How the output is kept identical to HF (bit for bit, tested):
- Resampling: HF's slow processor converts a uint8 image to PIL and calls
  `PIL.Image.resize((w, h), BICUBIC)` (transformers.image_transforms.resize, no reducing_gap).
  With Qwen2-VL's patch sizes we run PIL's resampling arithmetic compiled by numba (`resample.py`:
  same fixed-point coefficients, same pass order, same rounding), fused with the normalization and
  patch layout below, for images and for each video frame (written into its temporal slot); it is
  compared with the installed PIL's `resize` once per process (`_compiled_resize_matches_pil`) and
  PIL itself is used when they differ or numba is missing. Other patch sizes use PIL's `resize` (an
  RGB PIL input is resized as is: HF's numpy -> PIL round trip changes no pixel).
- Rescale + normalize: HF computes `float32(float64(x) * (1/255))`, then `(x - mean) / std` in float32.
  After the resize every value is one of 256 uint8 levels per channel, so HF's formula on the 256
  levels (a [3, 256] float32 table) is the reference; the compiled path looks values up in it. The
  PIL path runs cheaper float32 arithmetic per pixel (`x / 255`, then the same subtract and divide:
  contiguous SIMD loops, faster than a numpy table gather) only after checking at construction that
  it gives the table's float32 on all 256 levels of every channel (`_exact_level_steps`); for a
  rescale factor where no float32 form is exact, patches are looked up in the table instead.
- Layout: HF's reshape/transpose `(gt, T, C, gh/m, m, P, gw/m, m, P) -> (0,3,6,4,7,2,1,5,8)`. A video
  with a frame count not divisible by T repeats its last frame (as HF).

Speed (benchmarks/preprocess_throughput.py, 200 varied images, same run as HF): with PIL's resize,
PIL was about 70% of our time (its horizontal and vertical passes loop pixel by pixel); the compiled
path runs both passes as SIMD loops and writes the float32 output once: 5.55x HF's images/s, about
half the time of PIL + numpy (a 16-frame 640x480 video: 73 ms vs 198 ms with PIL, HF 392 ms).
Before it, an exact numpy/scipy re-implementation of PIL's passes (int32 CSR, float64 CSR, banded
float32 GEMM) was measured no faster than PIL: the gain needs compiled loops.
"""
import functools
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from mindspeed_ms.data import resample
from mindspeed_ms.data.image_io import load_image, load_video_frames, to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Each thread of one image gets at least this many output pixels. Measured on the 200 benchmark
# images, compiled path, 2 threads on 2 cores vs 1 (min of 3 calls each, summed per size bin):
# 0.91-0.99x below 200k output pixels, 1.13x at 200-400k, 1.24x at 400-700k, 1.41x above.
_PIXELS_PER_THREAD = 100_000
_POOLS = {}
# Patches normalized per block on the PIL path: a float32 block of this size stays in cache (1 MiB
# measured ~8% faster than 256 KiB and 4 MiB on the benchmark images; a heuristic).
_BLOCK_BYTES = 1024 * 1024
_POOLS_LOCK = threading.Lock()


_PASS_ORDER = []


def _pil_pass_order():
    """Which pass PIL's resize runs first, found once by probing this PIL on a random 64x64 image:
    "pillow13" (vertical first when the height shrinks by more than twice what the width does,
    Pillow >= 13), "horizontal" (always horizontal first, older Pillow), or None when neither rule
    reproduces PIL's output (then only PIL's own `resize` call is used)."""
    if not _PASS_ORDER:
        rng = np.random.default_rng(0)
        src = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        seen = []
        for w, h in ((62, 20), (20, 62), (40, 30)):
            ref = np.asarray(src.resize((w, h), Image.BICUBIC))
            h_first = np.asarray(src.resize((w, 64), Image.BICUBIC).resize((w, h), Image.BICUBIC))
            v_first = np.asarray(src.resize((64, h), Image.BICUBIC).resize((w, h), Image.BICUBIC))
            seen.append("h" if np.array_equal(ref, h_first) else "v" if np.array_equal(ref, v_first) else "?")
        rules = {"pillow13": ["v" if _vertical_first(64, 64, w, h, "pillow13") else "h"
                              for w, h in ((62, 20), (20, 62), (40, 30))],
                 "horizontal": ["h", "h", "h"]}
        _PASS_ORDER.append(next((name for name, want in rules.items() if want == seen), None))
    return _PASS_ORDER[0]


def _vertical_first(width, height, new_width, new_height, rule=None):
    """Whether PIL resizing (width, height) -> (new_width, new_height) runs its vertical pass first."""
    rule = rule or _pil_pass_order()
    shrink_h, shrink_w = height - new_height, width - new_width
    return rule == "pillow13" and shrink_h > 0 and shrink_h > 2 * shrink_w


@functools.lru_cache(maxsize=None)
def _compiled_resize_matches_pil():
    """Whether `resample.resize_to_patches` gives the installed PIL's bicubic pixels, in every pass
    order (width only, height only, both in either order, up and down): checked once per process on
    random images, with a table mapping each level to itself so the output is the resized pixels in
    patch layout. False without numba, when PIL's pass order is unknown, or when numba fails to
    compile here (with a warning: PIL's resize gives the same output, only slower)."""
    if resample.njit is None or _pil_pass_order() is None:
        return False
    try:
        return _compiled_resize_agrees()
    except Exception as exc:  # a broken numba/llvmlite install must not stop data loading
        warnings.warn(f"compiled image resize unavailable ({type(exc).__name__}: {exc}); using PIL's resize "
                      "(same output, ~2x slower preprocessing). Reinstall numba to get it back.")
        return False


def _compiled_resize_agrees():
    rng = np.random.default_rng(0)
    levels = np.tile(np.arange(256, dtype=np.float32), (3, 1))
    for (h, w), (nh, nw) in (((84, 100), (56, 112)), ((84, 100), (112, 56)), ((84, 100), (84, 56)),
                             ((100, 84), (56, 84)), ((84, 100), (168, 224)), ((56, 56), (56, 56))):
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = np.asarray(Image.fromarray(src).resize((nw, nh), Image.BICUBIC))
        want = want.reshape(nh // 28, 2, 14, nw // 28, 2, 14, 3).transpose(0, 3, 1, 4, 6, 2, 5)
        got = np.empty(nh * nw * 6, np.float32)
        resample.resize_to_patches(src, nh, nw, resample.pass_order(w, h, nw, nh, _vertical_first(w, h, nw, nh)),
                                   levels, got)
        if not np.array_equal(got.reshape(nh // 28, nw // 28, 2, 2, 3, 2, 14, 14), np.stack([want, want], 5)):
            return False
    return True


def _planes(im):
    """The three uint8 channel planes [H, W] of an RGB PIL image (one copy each, no split images)."""
    return [np.frombuffer(im.tobytes("raw", band), np.uint8).reshape(im.height, im.width) for band in "RGB"]


def _pool(workers):
    """A thread pool of `workers` threads, shared by all processors of this process. Keyed by pid too:
    a forked data-loader worker must not reuse its parent's pool (its threads do not exist there)."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="qwen2vl-preprocess")
    return pool


def smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280):
    """Target (h, w): multiples of `factor`, pixel count within [min_pixels, max_pixels], aspect kept.
    Same arithmetic as HF's `smart_resize` (Python floats, round-half-even `round`)."""
    if not 0 <= min_pixels <= max_pixels or max_pixels <= 0:
        raise ValueError(f"min_pixels={min_pixels}, max_pixels={max_pixels}: need 0 <= min_pixels <= max_pixels and "
                         f"max_pixels > 0")
    if min(height, width) <= 0:
        raise ValueError(f"image size {width}x{height} is empty")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)} "
            f"(image {width}x{height})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class Qwen2VLImageProcessor:
    """Drop-in for `transformers.Qwen2VLImageProcessor` (images and videos), numpy output.

    `proc(images=[...], videos=[...], return_tensors="np")` returns a dict with `pixel_values`
    [N, C*T*P*P] float32 and `image_grid_thw` [n, 3] int64 when images are given, and
    `pixel_values_videos` / `video_grid_thw` when videos are given. An image is a PIL image, an
    HWC/HW uint8 array or a file path; a video is a list of frames (same kinds), a directory of
    frame files, an animated GIF/WebP, or a video file (needs PyAV).
    """

    model_input_names = ["pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"]

    def __init__(self, do_resize=True, size=None, resample=Image.BICUBIC, do_rescale=True,
                 rescale_factor=1 / 255, do_normalize=True, image_mean=None, image_std=None,
                 do_convert_rgb=True, min_pixels=None, max_pixels=None, patch_size=14,
                 temporal_patch_size=2, merge_size=2, num_threads=None, video_min_pixels=None,
                 video_max_pixels=None, **kwargs):
        size = dict(size) if size else {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        if "shortest_edge" not in size or "longest_edge" not in size:
            raise ValueError("size must contain 'shortest_edge' and 'longest_edge' keys.")
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        self.size = size
        self.min_pixels, self.max_pixels = size["shortest_edge"], size["longest_edge"]
        # Videos: the limits of transformers' separate video processor where they differ (see
        # `data.dataset.checkpoint_processor`); by default the image limits.
        self.video_min_pixels = self.min_pixels if video_min_pixels is None else video_min_pixels
        self.video_max_pixels = self.max_pixels if video_max_pixels is None else video_max_pixels
        self.do_resize, self.resample = do_resize, resample
        self.do_rescale, self.rescale_factor = do_rescale, rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else OPENAI_CLIP_MEAN)
        self.image_std = list(image_std if image_std is not None else OPENAI_CLIP_STD)
        self.do_convert_rgb = do_convert_rgb
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        # Threads for one large image (strips of merge-block rows on the compiled path; same output
        # for any count; the PIL path ignores it). Default 1: data loading already runs one
        # processor per worker; on the 2-core development machine 2 threads were 1.41x on images
        # above 700k pixels but only x5.83 vs x5.55 HF over the 200 benchmark images (most are smaller).
        self.num_threads = 1 if num_threads is None else int(num_threads)
        if self.num_threads < 1:
            raise ValueError(f"num_threads={num_threads!r}: give 1 or more threads (None = 1)")
        self._lut = self._build_lut()
        self._level_steps = self._exact_level_steps()

    @functools.cached_property
    def _compiled(self):
        """Whether images take the compiled resize (`resample.py`): PIL's bicubic, Qwen2-VL's patch
        sizes (compile-time constants there) and a numba whose output equals this PIL's."""
        return (self.resample == Image.BICUBIC and _compiled_resize_matches_pil()
                and (self.patch_size, self.merge_size, self.temporal_patch_size)
                == (resample.PATCH, resample.MERGE, resample.TEMPORAL))

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Read `preprocessor_config.json` of an HF model directory (unknown keys are ignored as HF does)."""
        import json

        cfg_file = os.path.join(path, "preprocessor_config.json")
        cfg = {}
        if os.path.isfile(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                cfg = json.load(f)
        cfg.update(overrides)
        keys = ("do_resize", "size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                "do_convert_rgb", "min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size",
                "num_threads", "video_min_pixels", "video_max_pixels")
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    def _build_lut(self):
        levels = np.arange(256, dtype=np.uint8)
        x = levels.astype(np.float32)
        if self.do_rescale:
            x = (levels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        rows = []
        for c in range(3):
            v = x
            if self.do_normalize:
                v = (x - np.float32(self.image_mean[c])) / np.float32(self.image_std[c])
            rows.append(v.astype(np.float32))
        return np.stack(rows)

    def _exact_level_steps(self):
        """The arithmetic that maps uint8 levels to HF's float32 values, as (ufunc, per-channel
        operand [3, 1] or scalar) steps run on [.., 3, k] blocks by `_apply_steps`.

        HF's rescale is `float32(float64(x) * factor)`; the cheaper all-float32 forms `x / (1/factor)`
        or `x * factor` give the same float32 for some factors (1/255 among them) and not for
        others, so each form is run on all 256 levels of every channel and compared with the lookup
        table (HF's formula, the reference); the first form equal on every level is kept. None: no
        form is exact, and patches are looked up in the table instead."""
        mean = np.array(self.image_mean, np.float32).reshape(3, 1)
        std = np.array(self.image_std, np.float32).reshape(3, 1)
        tail = [(np.subtract, mean), (np.divide, std)] if self.do_normalize else []
        forms = [[]]
        if self.do_rescale:
            forms = [[(np.divide, np.float32(1 / self.rescale_factor))], [(np.multiply, np.float32(self.rescale_factor))]]
        levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=1)  # [256, 3, 1]
        for form in forms:
            got = np.empty(levels.shape, np.float32)
            _apply_steps(form + tail, levels, got)
            if np.array_equal(got[:, :, 0].T, self._lut):
                return form + tail
        return None

    # ---- one image or one video -> (patches [N, C*T*P*P], grid) ----
    def _as_rgb_array(self, img):
        if isinstance(img, (str, bytes)) or hasattr(img, "read"):
            img = load_image(img)
        if isinstance(img, Image.Image):
            if self.do_convert_rgb:
                img = to_rgb(img)
            arr = np.asarray(img)
        else:
            arr = np.asarray(img)
            if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
                arr = arr.transpose(1, 2, 0)  # channels-first input
            if arr.dtype != np.uint8:
                raise ValueError(f"array images must be uint8 (0..255), got {arr.dtype}; convert or pass a PIL image")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {arr.shape}")
        return arr

    def _as_rgb_image(self, img):
        """Any accepted image kind -> PIL RGB image holding the same uint8 pixels as `_as_rgb_array`.
        An RGB PIL image is used as is: HF's numpy -> PIL round trip before resizing changes no pixel."""
        if isinstance(img, (str, bytes)) or hasattr(img, "read"):
            img = load_image(img)
        if isinstance(img, Image.Image):
            if self.do_convert_rgb:
                img = to_rgb(img)
            if img.mode == "RGB":
                return img
        return Image.fromarray(np.ascontiguousarray(self._as_rgb_array(img)))

    def _resize(self, arr, h, w):
        if not self.do_resize or arr.shape[:2] == (h, w):
            return arr
        return np.asarray(Image.fromarray(arr).resize((w, h), resample=self.resample))

    def _target_size(self, height, width, min_pixels, max_pixels):
        p, m = self.patch_size, self.merge_size
        rh, rw = height, width
        if self.do_resize:
            rh, rw = smart_resize(height, width, factor=p * m, min_pixels=min_pixels, max_pixels=max_pixels)
        if (rh // p) % m or (rw // p) % m or rh % p or rw % p:
            raise ValueError(f"resized size {rw}x{rh} is not a multiple of patch_size*merge_size={p * m}")
        return rh, rw

    def _image_patches(self, img, min_pixels, max_pixels):
        """One image -> ([gh*gw, C*T*P*P] float32, (1, gh, gw)).

        Qwen2-VL's patch sizes with PIL's bicubic: the compiled resize of `resample.py` (PIL's
        arithmetic, checked against this PIL once per process), writing the patches directly; with
        `num_threads > 1` and a large image, threads take disjoint strips of merge-block rows.
        Anything else: PIL's own resize, then `_patchify_into`."""
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        if self._compiled:
            arr = self._as_rgb_array(img)
            h, w = arr.shape[:2]
            rh, rw = self._target_size(h, w, min_pixels, max_pixels)
            gh, gw = rh // p, rw // p
            order = resample.pass_order(w, h, rw, rh, _vertical_first(w, h, rw, rh)) if self.do_resize \
                else resample.NONE
            out = np.empty(rh * rw * 3 * tp, np.float32)
            workers = min(self.num_threads, gh // m, max(1, rh * rw // _PIXELS_PER_THREAD))
            if workers == 1:
                resample.resize_to_patches(arr, rh, rw, order, self._lut, out)
            else:
                edges = (np.linspace(0, gh // m, workers + 1).astype(int) * (p * m)).tolist()
                list(_pool(workers).map(lambda k: resample.resize_to_patches(
                    arr, rh, rw, order, self._lut, out, edges[k], edges[k + 1]), range(workers)))
            return out.reshape(gh * gw, 3 * tp * p * p), (1, gh, gw)

        im = self._as_rgb_image(img)
        rh, rw = self._target_size(im.height, im.width, min_pixels, max_pixels)
        if self.do_resize and im.size != (rw, rh):
            im = im.resize((rw, rh), resample=self.resample)
        out = np.empty((rh // (p * m), rw // (p * m), m * m, 3, tp, p * p), dtype=np.float32)
        self._patchify_into(_planes(im), out)
        return out.reshape(-1, 3 * tp * p * p), (1, rh // p, rw // p)

    def _patchify_into(self, planes, out):
        """Three uint8 channel planes [H, W] (whole merge blocks) -> their normalized patches, written
        into the contiguous `out` [H/(P*m), W/(P*m), m*m, C, T, P*P] (the output or a row strip of it).

        1. The uint8 pixels are put in patch order first: each P-pixel row segment of a patch is
           moved as one opaque P-byte item (1 byte per pixel moved, no per-pixel index).
        2. Blocks of patches are normalized in float32 with the exact arithmetic of
           `_exact_level_steps` (contiguous SIMD loops, no table gather), in a small buffer that stays
           in cache, and each block is written into all T frame slots of the output: the output is
           written once, in its final layout."""
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        bh, bw = planes[0].shape[0] // (p * m), planes[0].shape[1] // (p * m)
        n = bh * bw * m * m
        seg = np.dtype((np.void, p))
        u8 = np.empty((bh, bw, m, m, 3, p), dtype=seg)
        for c, plane in enumerate(planes):
            u8[:, :, :, :, c] = np.ascontiguousarray(plane).view(seg).reshape(bh, m, p, bw, m).transpose(0, 3, 1, 4, 2)
        u8 = u8.view(np.uint8).reshape(n, 3, p * p)
        out = out.reshape(n, 3, tp, p * p)
        if self._level_steps is None:  # HF's float64 rescale: a table lookup is cheaper than float64 math
            for c in range(3):
                vals = np.take(self._lut[c], u8[:, c], mode="wrap")
                out[:, c] = vals[:, None, :]
            return
        block = max(1, _BLOCK_BYTES // (12 * p * p))
        buf = np.empty((min(block, n), 3, p * p), np.float32)
        for i in range(0, n, block):
            j = min(n, i + block)
            b = buf[:j - i]
            _apply_steps(self._level_steps, u8[i:j], b)
            out[i:j] = b[:, :, None, :]

    def _process_frames(self, frames, min_pixels, max_pixels):
        """One video (list of frames) -> ([gt*gh*gw, C*T*P*P] float32, (gt, gh, gw))."""
        arrs = [self._as_rgb_array(f) for f in frames]
        if not arrs:
            raise ValueError("a video has no frames")
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        # HF sizes every frame of a video by the first frame.
        rh, rw = self._target_size(*arrs[0].shape[:2], min_pixels, max_pixels)
        if self._compiled:  # each frame resized straight into its temporal slot of its group of T
            n, group = len(arrs), rh * rw * 3 * tp
            out = np.empty(-(-n // tp) * group, np.float32)
            for f, a in enumerate(arrs):
                h, w = a.shape[:2]
                if not self.do_resize and (h, w) != (rh, rw):
                    raise ValueError(f"video frame {f} is {w}x{h}, frame 0 is {rw}x{rh}: with do_resize=False "
                                     "all frames must have the same size")
                order = resample.pass_order(w, h, rw, rh, _vertical_first(w, h, rw, rh)) if self.do_resize \
                    else resample.NONE
                g, slot = divmod(f, tp)
                resample.resize_to_patches(a, rh, rw, order, self._lut, out[g * group:(g + 1) * group],
                                           slot=slot, fill=f == n - 1)
            return out.reshape(-1, 3 * tp * p * p), (-(-n // tp), rh // p, rw // p)
        arrs = [self._resize(a, rh, rw) for a in arrs]
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise ValueError(f"video frames have different sizes after resizing: {sorted(shapes)}")
        gh, gw = rh // p, rw // p
        n = len(arrs)
        if n % tp:
            arrs = arrs + [arrs[-1]] * (tp - n % tp)
        stack = np.stack(arrs)
        gt = stack.shape[0] // tp
        # stack: [gt*T, H, W, C] uint8 -> HF layout (gt, gh/m, gw/m, m, m, C, T, P, P)
        u8 = stack.reshape(gt, tp, gh // m, m, p, gw // m, m, p, 3).transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
        u8 = np.ascontiguousarray(u8).reshape(gt * gh * gw, 3, tp * p * p)
        out = np.empty(u8.shape, dtype=np.float32)
        if self._level_steps is None:
            for c in range(3):
                out[:, c] = self._lut[c].take(u8[:, c], mode="wrap")
        else:
            _apply_steps(self._level_steps, u8, out)
        return out.reshape(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)

    def __call__(self, images=None, videos=None, **kwargs):
        return self.preprocess(images=images, videos=videos, **kwargs)

    def preprocess(self, images=None, videos=None, min_pixels=None, max_pixels=None, return_tensors="np",
                   video_fps=None, video_maxlen=None, **unused):
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: this processor returns numpy arrays only ('np')")
        vmin = self.video_min_pixels if min_pixels is None else min_pixels
        vmax = self.video_max_pixels if max_pixels is None else max_pixels
        min_pixels = self.min_pixels if min_pixels is None else min_pixels
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
        out = {}
        if images is not None:
            if not isinstance(images, (list, tuple)):
                images = [images]
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            patches, grids = [], []
            for im in flat:
                pv, g = self._image_patches(im, min_pixels, max_pixels)
                patches.append(pv)
                grids.append(g)
            out["pixel_values"] = _join(patches, 3 * self.temporal_patch_size * self.patch_size ** 2)
            out["image_grid_thw"] = np.array(grids, dtype=np.int64).reshape(-1, 3)
        if videos is not None:
            videos = _as_video_list(videos)
            patches, grids = [], []
            for v in videos:
                frames = v
                if isinstance(v, str):
                    frames = load_video_frames(v, fps=video_fps or 2.0, maxlen=video_maxlen or 128)
                pv, g = self._process_frames(list(frames), vmin, vmax)
                patches.append(pv)
                grids.append(g)
            out["pixel_values_videos"] = _join(patches, 3 * self.temporal_patch_size * self.patch_size ** 2)
            out["video_grid_thw"] = np.array(grids, dtype=np.int64).reshape(-1, 3)
        return out


def _apply_steps(steps, u8, out):
    """uint8 [.., 3, k] -> float32 `out` (same shape): the uint8 values as float32, then each
    (ufunc, operand) step in place."""
    if not steps:
        out[...] = u8
        return
    (first, arg), rest = steps[0], steps[1:]
    first(u8, arg, out=out, dtype=np.float32)
    for ufunc, arg in rest:
        ufunc(out, arg, out=out)


def _join(patches, dim):
    """Concatenate per-item patch arrays; one item is returned as is (no copy of a large array)."""
    if len(patches) == 1:
        return patches[0]
    return np.concatenate(patches) if patches else np.zeros((0, dim), np.float32)


def _as_video_list(videos):
    """Accept one video (path, [T,H,W,C] array or list of frames) or a list of videos."""
    if isinstance(videos, str) or (isinstance(videos, np.ndarray) and videos.ndim == 4):
        return [videos]
    videos = list(videos)
    first = videos[0] if videos else None
    if isinstance(first, Image.Image) or (isinstance(first, np.ndarray) and first.ndim in (2, 3)):
        return [videos]
    return videos
