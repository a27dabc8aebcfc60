"""Shared image/video fixtures: deterministic, varied, small enough for a 2-core CPU.

`varied_images()` covers tiny to large sizes, extreme aspect ratios and the PIL modes a dataset
meets (RGB, RGBA, LA, L, 1, P, CMYK, I;16), with photo-like content (smooth gradients + texture +
edges) because pure noise or flat colour would hide resampling differences.
"""
import io

import numpy as np
from PIL import Image


def photo_like(w, h, seed=0):
    """A uint8 HxWx3 array with gradients, a few sharp shapes and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = rng.uniform(0.5, 4.0, 2)
    base = np.stack([
        127 + 120 * np.sin(x / max(w, 1) * fx * np.pi + rng.uniform(0, 6)),
        127 + 120 * np.cos(y / max(h, 1) * fy * np.pi + rng.uniform(0, 6)),
        255 * (x + y) / max(w + h - 2, 1),
    ], axis=-1)
    for _ in range(3):  # hard edges
        x0, y0 = rng.integers(0, max(w, 1)), rng.integers(0, max(h, 1))
        base[y0:y0 + h // 3 + 1, x0:x0 + w // 3 + 1] = rng.uniform(0, 255, 3)
    base += rng.normal(0, 8, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def rgb(w, h, seed=0):
    return Image.fromarray(photo_like(w, h, seed), "RGB")


def in_mode(img, mode, seed=0):
    """`img` (RGB) expressed in another PIL mode."""
    if mode == "RGB":
        return img
    if mode == "RGBA":
        a = np.asarray(img)
        alpha = np.random.default_rng(seed).integers(0, 256, a.shape[:2], dtype=np.uint8)
        return Image.fromarray(np.dstack([a, alpha]), "RGBA")
    if mode == "I;16":
        g = np.asarray(img.convert("L")).astype(np.uint16) * 257
        return Image.fromarray(g)  # uint16 -> mode I;16
    if mode == "P":
        return img.convert("P", palette=Image.ADAPTIVE, colors=64)
    return img.convert(mode)


SIZES = [(10, 10), (28, 28), (27, 29), (56, 14), (100, 100), (224, 224), (333, 222), (640, 480), (480, 640),
         (1024, 768), (1280, 720), (2000, 1500), (1500, 2000), (999, 997), (3000, 20), (20, 3000),
         (5000, 30), (30, 5000), (1, 150), (150, 1), (7, 1300), (1920, 1080)]
MODES = ["RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "I;16"]


def varied_images(n=None):
    """(name, PIL image) pairs: every size in RGB, then every mode on a few sizes, then JPEG/PNG round trips."""
    out = []
    for i, (w, h) in enumerate(SIZES):
        out.append((f"rgb_{w}x{h}", rgb(w, h, seed=i)))
    for j, mode in enumerate(MODES[1:]):
        for k, (w, h) in enumerate([(64, 48), (300, 200), (31, 911)]):
            out.append((f"{mode}_{w}x{h}", in_mode(rgb(w, h, seed=100 + 3 * j + k), mode, seed=j)))
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        rgb(500, 375, seed=7).save(buf, format=fmt)
        buf.seek(0)
        out.append((f"{fmt.lower()}_500x375", Image.open(buf)))
    return out[:n] if n else out


def frames(n, w=96, h=64, seed=0):
    """n distinct RGB frames of one size (a tiny video)."""
    return [rgb(w, h, seed=seed + i) for i in range(n)]


def write_gif(path, n, w=96, h=64, duration_ms=100, seed=0):
    fr = frames(n, w, h, seed)
    fr[0].save(path, save_all=True, append_images=fr[1:], duration=duration_ms, loop=0)
    return path


def write_image(path, w=64, h=48, seed=0, mode="RGB", fmt=None):
    img = in_mode(rgb(w, h, seed), mode, seed)
    img.save(path, format=fmt)
    return path
