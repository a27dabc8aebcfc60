"""Qwen2-VL image/video processor in numpy + PIL (no torch), equal to HF's `Qwen2VLImageProcessor`.

How the output is kept identical to HF:
- Resampling: HF's slow processor converts a uint8 image to PIL and calls
  `PIL.Image.resize((w, h), BICUBIC)` (transformers.image_transforms.resize, no reducing_gap).
  We make exactly the same PIL call, so the resized uint8 pixels are bit-identical.
- Rescale + normalize: HF computes `float32(float64(x) * (1/255))`, then `(x - mean) / std` in float32.
  After the resize every value is one of 256 uint8 levels per channel, so we evaluate that very
  formula once on the 256 levels (a [3, 256] float32 lookup table) and gather from it: same float32
  results, no per-pixel float math.
- Patch flattening and temporal tiling are done on the uint8 array (a quarter of the bytes), with
  HF's reshape/transpose `(gt, T, C, gh/m, m, P, gw/m, m, P) -> (0,3,6,4,7,2,1,5,8)`; a single
  image is normalized once and copied into its T frame slots, a video with a frame count not divisible by T
  repeats its last frame (as HF).
"""
import math

import numpy as np
from PIL import Image

from mindspeed_ms.data.image_io import load_image, load_video_frames, to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280):
    """Target (h, w): multiples of `factor`, pixel count within [min_pixels, max_pixels], aspect kept.
    Same arithmetic as HF's `smart_resize` (Python floats, round-half-even `round`)."""
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
                 temporal_patch_size=2, merge_size=2, **kwargs):
        size = dict(size) if size else {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        if "shortest_edge" not in size or "longest_edge" not in size:
            raise ValueError("size must contain 'shortest_edge' and 'longest_edge' keys.")
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        self.size = size
        self.min_pixels, self.max_pixels = size["shortest_edge"], size["longest_edge"]
        self.do_resize, self.resample = do_resize, resample
        self.do_rescale, self.rescale_factor = do_rescale, rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else OPENAI_CLIP_MEAN)
        self.image_std = list(image_std if image_std is not None else OPENAI_CLIP_STD)
        self.do_convert_rgb = do_convert_rgb
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self._lut = self._build_lut()

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Read `preprocessor_config.json` of an HF model directory (unknown keys are ignored as HF does)."""
        import json
        import os

        cfg_file = os.path.join(path, "preprocessor_config.json")
        cfg = {}
        if os.path.isfile(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                cfg = json.load(f)
        cfg.update(overrides)
        keys = ("do_resize", "size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                "do_convert_rgb", "min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size")
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

    def _resize(self, arr, h, w):
        if not self.do_resize or arr.shape[:2] == (h, w):
            return arr
        return np.asarray(Image.fromarray(arr).resize((w, h), resample=self.resample))

    def _process_frames(self, frames, min_pixels, max_pixels):
        arrs = [self._as_rgb_array(f) for f in frames]
        if not arrs:
            raise ValueError("a video has no frames")
        height, width = arrs[0].shape[:2]
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        rh, rw = height, width
        if self.do_resize:
            # HF sizes every frame of a video by the first frame.
            rh, rw = smart_resize(height, width, factor=p * m, min_pixels=min_pixels, max_pixels=max_pixels)
        arrs = [self._resize(a, rh, rw) for a in arrs]
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise ValueError(f"video frames have different sizes after resizing: {sorted(shapes)}")
        gh, gw = rh // p, rw // p
        if gh % m or gw % m:
            raise ValueError(f"resized size {rw}x{rh} is not a multiple of patch_size*merge_size={p * m}")
        n = len(arrs)
        if n == 1:
            # A single image is its own T frames: normalize one frame, then copy it into each slot.
            u8 = arrs[0].reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
            u8 = np.ascontiguousarray(u8).reshape(gh * gw, 3, p * p)
            gt = 1
            out = np.empty((gh * gw, 3, tp, p * p), dtype=np.float32)
            for c in range(3):
                v = self._lut[c].take(u8[:, c])
                for t in range(tp):
                    out[:, c, t] = v
        else:
            if n % tp:
                arrs = arrs + [arrs[-1]] * (tp - n % tp)
            stack = np.stack(arrs)
            gt = stack.shape[0] // tp
            # stack: [gt*T, H, W, C] uint8 -> HF layout (gt, gh/m, gw/m, m, m, C, T, P, P)
            u8 = stack.reshape(gt, tp, gh // m, m, p, gw // m, m, p, 3).transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
            u8 = np.ascontiguousarray(u8).reshape(gt * gh * gw, 3, tp * p * p)
            out = np.empty(u8.shape, dtype=np.float32)
            for c in range(3):
                out[:, c] = self._lut[c][u8[:, c]]
        return out.reshape(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)

    def __call__(self, images=None, videos=None, **kwargs):
        return self.preprocess(images=images, videos=videos, **kwargs)

    def preprocess(self, images=None, videos=None, min_pixels=None, max_pixels=None, return_tensors="np",
                   video_fps=None, video_maxlen=None, **unused):
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: this processor returns numpy arrays only ('np')")
        min_pixels = self.min_pixels if min_pixels is None else min_pixels
        max_pixels = self.max_pixels if max_pixels is None else max_pixels
        out = {}
        if images is not None:
            if not isinstance(images, (list, tuple)):
                images = [images]
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            patches, grids = [], []
            for im in flat:
                pv, g = self._process_frames([im], min_pixels, max_pixels)
                patches.append(pv)
                grids.append(g)
            out["pixel_values"] = np.concatenate(patches) if patches else np.zeros((0, 3 * self.temporal_patch_size * self.patch_size ** 2), np.float32)
            out["image_grid_thw"] = np.array(grids, dtype=np.int64).reshape(-1, 3)
        if videos is not None:
            videos = _as_video_list(videos)
            patches, grids = [], []
            for v in videos:
                frames = v
                if isinstance(v, str):
                    frames = load_video_frames(v, fps=video_fps or 2.0, maxlen=video_maxlen or 128)
                pv, g = self._process_frames(list(frames), min_pixels, max_pixels)
                patches.append(pv)
                grids.append(g)
            out["pixel_values_videos"] = np.concatenate(patches)
            out["video_grid_thw"] = np.array(grids, dtype=np.int64).reshape(-1, 3)
        return out


def _as_video_list(videos):
    """Accept one video (path, [T,H,W,C] array or list of frames) or a list of videos."""
    if isinstance(videos, str) or (isinstance(videos, np.ndarray) and videos.ndim == 4):
        return [videos]
    videos = list(videos)
    first = videos[0] if videos else None
    if isinstance(first, Image.Image) or (isinstance(first, np.ndarray) and first.ndim in (2, 3)):
        return [videos]
    return videos
