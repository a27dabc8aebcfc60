"""Reading images and videos, RGB conversion and MindSpeed-MM's pre-resize rules.

The rules follow MindSpeed-MM's qwen2vl data plugin (itself from LLaMA-Factory), applied before the
HF-style processor:
- if w*h > max_pixels (or < min_pixels), scale both sides by sqrt(target / (w*h)), truncating with
  int(), NEAREST resampling; convert to RGB;
- force the short side to at least 28 and clamp an aspect ratio above 200 to 180:1. MindSpeed-MM
  calls `Image.resize(size)` here without a filter, i.e. PIL's default, which for the RGB image it
  has at this point is BICUBIC (NEAREST only for modes "1" and "P"); we call it the same way.
- videos: frames sampled by `video_fps` / `video_maxlen` (a container without a frame count: its
  first `video_maxlen` frames), each frame pre-resized with the video pixel limits, an odd frame
  count padded by repeating the last frame.
"""
import io
import itertools
import math
import os

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class MediaError(ValueError):
    """An image or video that cannot be used (missing, corrupt, unreadable)."""


def load_image(src):
    """Open an image from a path, bytes, a file object or a {"path"/"bytes"} dict, fully decoded."""
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, dict):
        src = src.get("bytes") or src.get("path")
    name = src if isinstance(src, str) else "<bytes>"
    try:
        if isinstance(src, bytes):
            src = io.BytesIO(src)
        img = Image.open(src)
        img.load()  # decode now so a truncated file fails here, not later in a worker
    except FileNotFoundError:
        raise MediaError(f"image file not found: {name} (looked for {os.path.abspath(name)})") from None
    except Image.DecompressionBombError as e:
        # PIL refuses images above 2 x Image.MAX_IMAGE_PIXELS before decoding them (a decompression bomb
        # or an image far beyond any max_pixels); an Exception, not an OSError
        raise MediaError(f"image {name} is too large to open safely ({e}); shrink the image (or drop it from "
                         f"the dataset)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"cannot read image {name}: {e}") from None
    return img


def to_rgb(img):
    """Convert any PIL mode to RGB.

    RGBA/LA/P/L/1/CMYK/YCbCr go through PIL's `convert("RGB")` (what HF does: alpha dropped).
    High bit depth modes are rescaled first, because PIL's own conversion clips them at 255 and
    turns a 16-bit photo white: I;16* by 1/257 (65535 -> 255), I by its max bit depth, F taken as
    0..1 when its max is <= 1 and as 0..255 otherwise.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16"):
            a = a / 257.0
        elif img.mode == "I":
            top = a.max() if a.size else 0
            a = a / 257.0 if top > 255 else a
        elif a.size and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")  # 2-D uint8 -> L
    if img.mode == "RGBa":
        img = img.convert("RGBA")
    return img.convert("RGB")


def pre_resize(img, max_pixels, min_pixels):
    """MindSpeed-MM's rescale before the processor (see module docstring). Returns an RGB image."""
    w, h = img.size
    if w * h > max_pixels:
        f = math.sqrt(max_pixels / (w * h))
        img = img.resize((max(1, int(w * f)), max(1, int(h * f))), resample=Image.NEAREST)
    w, h = img.size
    if w * h < min_pixels:
        f = math.sqrt(min_pixels / (w * h))
        img = img.resize((int(w * f), int(h * f)), resample=Image.NEAREST)
    img = to_rgb(img)
    # MindSpeed-MM's Qwen2-VL rules below pass no filter (PIL's default: BICUBIC): neither do we,
    # so the pixels follow PIL's default wherever MindSpeed-MM's do.
    if min(img.width, img.height) < 28:
        img = img.resize((max(img.width, 28), max(img.height, 28)))
    if img.width / img.height > 200:
        img = img.resize((img.height * 180, img.height))
    if img.height / img.width > 200:
        img = img.resize((img.width, img.width * 180))
    return img


def sample_indices(total_frames, duration_s, fps, maxlen):
    """Frame indices to keep: floor(duration * fps) frames (at least 1), at most `maxlen` and the
    frame count, spread evenly with linspace (MindSpeed-MM's sampling). Without a known duration
    every frame counts as one sample point (capped by `maxlen`)."""
    if total_frames <= 0:
        return np.zeros((0,), dtype=np.int64)
    n = total_frames if duration_s is None else max(1, math.floor(duration_s * fps))
    n = max(1, min(total_frames, int(maxlen), n))
    return np.linspace(0, total_frames - 1, n).astype(np.int32).astype(np.int64)


def _frames_from_pil_sequence(path, fps, maxlen):
    img = load_image(path)
    frames, durations = [], []
    for frame in ImageSequence.Iterator(img):
        frames.append(frame.convert("RGB"))
        durations.append(frame.info.get("duration", 0) or 0)
    duration = sum(durations) / 1000.0 if all(durations) else None
    return [frames[i] for i in sample_indices(len(frames), duration, fps, maxlen)]


def _frames_from_av(path, fps, maxlen):
    try:
        import av
    except ImportError:
        raise MediaError(f"cannot decode video {path}: install PyAV (pip install av), or give the video as a "
                         f"directory of frame images or an animated GIF") from None
    try:
        with av.open(path, "r") as container:
            stream = next(s for s in container.streams if s.type == "video")
            total = stream.frames
            duration = float(stream.duration * stream.time_base) if stream.duration else None
            if not total:  # no frame count in the container: MindSpeed-MM keeps the first `maxlen` frames
                return [f.to_image() for f in itertools.islice(container.decode(stream), int(maxlen))]
            keep = set(sample_indices(total, duration, fps, maxlen).tolist())
            container.seek(0)
            frames = [f.to_image() for i, f in enumerate(container.decode(stream)) if i in keep]
    except StopIteration:
        raise MediaError(f"video {path} has no video stream") from None
    except (OSError, ValueError) as e:  # av.error.* derive from these
        raise MediaError(f"cannot decode video {path}: {e}") from None
    return frames


def load_video_frames(src, fps=2.0, maxlen=128):
    """Sampled frames (PIL, RGB) of a video given as a file, a directory of frame images, an
    animated GIF/WebP, a [T,H,W,C] uint8 array or a list of frames/frame paths."""
    if isinstance(src, np.ndarray):
        src = list(src)
    if isinstance(src, (list, tuple)):
        frames = [Image.fromarray(f) if isinstance(f, np.ndarray) else load_image(f) for f in src]
        return [frames[i] for i in sample_indices(len(frames), None, fps, maxlen)]
    if not os.path.exists(src):
        raise MediaError(f"video not found: {src}")
    if os.path.isdir(src):
        names = sorted(n for n in os.listdir(src) if n.lower().endswith(IMAGE_EXTS))
        if not names:
            raise MediaError(f"video directory {src} holds no frame images ({', '.join(IMAGE_EXTS)})")
        keep = sample_indices(len(names), None, fps, maxlen)
        return [load_image(os.path.join(src, names[i])) for i in keep]
    if src.lower().endswith((".gif", ".webp", ".apng", ".png")):
        # MindSpeed-MM decodes every video with PyAV (the same pixels as PIL's reader for GIF/APNG, tested) and so
        # samples by PyAV's frame count and duration (an APNG has no frame count: first `maxlen`);
        # PIL's reader covers what PyAV cannot open (animated WebP) or a missing PyAV.
        try:
            return _frames_from_av(src, fps, maxlen)
        except MediaError:
            return _frames_from_pil_sequence(src, fps, maxlen)
    return _frames_from_av(src, fps, maxlen)


def sampled_fps(src, fps=2.0, maxlen=128):
    """Frames per second of the sampled video, as MindSpeed-MM's Qwen2.5-VL data computes it for
    `second_per_grid_ts` (= temporal_patch_size / this): for a file read by PyAV, the number of
    sampled frame indices over the stream's duration (`maxlen` indices when the stream has no frame
    count); `fps` when the duration is unknown or the video is a frame directory / frame list. A file
    PyAV cannot open (animated WebP) uses its PIL frame durations. Reads metadata only."""
    if not (isinstance(src, str) and os.path.isfile(src)):
        return float(fps)
    try:
        import av
        with av.open(src, "r") as container:
            stream = next(s for s in container.streams if s.type == "video")
            total = stream.frames
            duration = float(stream.duration * stream.time_base) if stream.duration else None
    except (ImportError, StopIteration, OSError, ValueError):
        if not src.lower().endswith((".gif", ".webp", ".apng", ".png")):
            return float(fps)
        durations = [frame.info.get("duration", 0) or 0 for frame in ImageSequence.Iterator(load_image(src))]
        total, duration = len(durations), (sum(durations) / 1000.0 if all(durations) else None)
    if not duration:
        return float(fps)
    kept = int(maxlen) if not total else len(sample_indices(total, duration, fps, maxlen))
    return kept / duration


def regularize_video(src, fps, maxlen, max_pixels, min_pixels):
    """Sampled, pre-resized RGB frames with an even count (MindSpeed-MM pads odd counts)."""
    frames = [pre_resize(f, max_pixels, min_pixels) for f in load_video_frames(src, fps, maxlen)]
    if not frames:
        raise MediaError(f"video {src if isinstance(src, str) else '<frames>'} has no frames")
    if len(frames) % 2:
        frames.append(frames[-1])
    return frames
