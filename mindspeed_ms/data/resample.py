"""PIL's bicubic resize fused with HF's rescale/normalize and Qwen2-VL's patch layout, compiled by numba.

HF's slow `Qwen2VLImageProcessor` resizes with `PIL.Image.resize(..., BICUBIC)`, then rescales,
normalizes and reorders into patches in numpy. This module computes the same float32 patches in one
compiled pass over the image, with PIL's exact integer arithmetic (Pillow's Resample.c):

- coefficients: PIL's `precompute_coeffs` in float64 (same operations in the same order, so the
  same doubles), turned into 22-bit fixed point as `normalize_coeffs_8bpc` does;
- each pass: int32 sums of uint8 pixels times coefficients, plus half, shifted right by 22 and
  clipped to 0..255 (the intermediate image is uint8 in PIL too), in PIL's pass order;
- values: every resized uint8 level goes through the processor's [3, 256] table (HF's formula);
- layout: each resized row is written straight into its patches, [H/28, W/28, 2, 2, C, T, 14*14].

Why it is faster than PIL + numpy: the vertical pass runs over whole rows (SIMD over width x
channels), the horizontal pass over tiles of 32 transposed rows (SIMD over rows x channels) where PIL
loops pixel by pixel, and the float32 output is written once with no intermediate images. Patch,
merge and temporal sizes are compile-time constants (14, 2, 2: every Qwen2-VL checkpoint); the
processor uses PIL for anything else. `matches_pil()` checks this code against the installed PIL
once per process; a PIL that resizes differently is then used instead, so HF-equality never
depends on this module.
"""
import functools

import numpy as np

try:
    from numba import njit
except ImportError:  # numba is a dependency; without it the processor keeps PIL's resize
    njit = None

PATCH, MERGE, TEMPORAL = 14, 2, 2
_BITS = 22  # PIL's PRECISION_BITS (32 - 8 - 2)
_HALF = 1 << (_BITS - 1)
_TILE_ROWS = 32  # rows per transposed tile of the horizontal pass (32 measured faster than 8 or 16)

# pass orders of one resize
NONE, H_ONLY, V_ONLY, H_THEN_V, V_THEN_H = range(5)


def _bicubic(x):
    """PIL's bicubic filter (a = -0.5) on a float64 array, written as Resample.c evaluates it."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=512)
def bicubic_coefficients(in_size, out_size):
    """(bounds [out, 2] int32 (first input index, tap count), taps [out, ksize] int32): PIL's
    fixed-point bicubic coefficients for resizing a whole axis of `in_size` to `out_size`."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale  # the bicubic filter's support is 2
    ksize = int(np.ceil(support)) * 2 + 1
    center = 0.0 + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    x = np.arange(ksize)
    inside = x[None, :] < xmax[:, None]
    w = np.where(inside, _bicubic(((x[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5)
                                  * (1.0 / filterscale)), 0.0)
    ww = np.cumsum(w, axis=1)[:, -1:]  # left-to-right, as PIL's loop (np.sum would sum pairwise)
    w = np.where(ww != 0.0, w / np.where(ww != 0.0, ww, 1.0), w)
    fixed = w * (1 << _BITS)
    taps = np.trunc(np.where(w < 0, fixed - 0.5, fixed + 0.5)).astype(np.int32)
    return np.stack([xmin, xmax], 1).astype(np.int32), taps


def pass_order(width, height, new_width, new_height, vertical_first):
    """NONE / H_ONLY / V_ONLY / H_THEN_V / V_THEN_H for resizing (width, height) -> (new_width, new_height)."""
    need_h, need_v = width != new_width, height != new_height
    if need_h and need_v:
        return V_THEN_H if vertical_first else H_THEN_V
    return H_ONLY if need_h else V_ONLY if need_v else NONE


def resize_to_patches(src, new_height, new_width, order, lut, out, row_lo=0, row_hi=None):
    """Rows [row_lo, row_hi) (whole merge blocks) of `src` [H, W, 3] uint8 resized to
    (new_height, new_width) -> their normalized patches in `out`, the whole image's flat float32
    output [new_height * new_width * 6] (disjoint row ranges can run in parallel threads)."""
    row_hi = new_height if row_hi is None else row_hi
    h, w = src.shape[:2]
    hb, hk = bicubic_coefficients(w, new_width) if order in (H_ONLY, H_THEN_V, V_THEN_H) else _NO_PASS
    vb, vk = bicubic_coefficients(h, new_height) if order in (V_ONLY, H_THEN_V, V_THEN_H) else _NO_PASS
    src = np.ascontiguousarray(src).reshape(h, w * 3)
    src.flags.writeable = False  # one compiled specialization for PIL's read-only arrays and writable ones
    _resize_to_patches(src, hb, hk, vb, vk, order, row_lo, row_hi, new_width, lut, out)


_NO_PASS = (np.zeros((1, 2), np.int32), np.zeros((1, 1), np.int32))


def _compiled(fn):
    return njit(cache=True, nogil=True)(fn) if njit is not None else fn


@_compiled
def _vertical_row(src, first, count, taps, acc, out_row):
    """One output row of the vertical pass: rows first..first+count of src [., W*3] -> out_row."""
    n = src.shape[1]
    for j in range(n):
        acc[j] = _HALF
    for t in range(count):
        k = taps[t]
        row = src[first + t]
        for j in range(n):
            acc[j] += np.int32(row[j]) * k
    for j in range(n):
        v = acc[j] >> _BITS
        out_row[j] = 0 if v < 0 else (255 if v > 255 else v)


@_compiled
def _horizontal_rows(src, lo, hi, bounds, taps, tile, acc, dst):
    """Rows lo..hi of src [., W*3] through the horizontal pass -> dst rows 0..hi-lo [., OW*3].
    Rows are moved into a transposed tile [W, rows*3] so each output pixel's taps are vector
    operations across rows and channels."""
    w = src.shape[1] // 3
    rows = tile.shape[1] // 3
    for a in range(lo, hi, rows):
        nr = min(rows, hi - a)
        lanes = nr * 3
        for r in range(nr):
            row = src[a + r]
            for x in range(w):
                tile[x, r * 3] = row[x * 3]
                tile[x, r * 3 + 1] = row[x * 3 + 1]
                tile[x, r * 3 + 2] = row[x * 3 + 2]
        for xx in range(bounds.shape[0]):
            first = bounds[xx, 0]
            for j in range(lanes):
                acc[j] = _HALF
            for t in range(bounds[xx, 1]):
                k = taps[xx, t]
                col = tile[first + t]
                for j in range(lanes):
                    acc[j] += np.int32(col[j]) * k
            for r in range(nr):
                drow = dst[a - lo + r]
                for c in range(3):
                    v = acc[r * 3 + c] >> _BITS
                    drow[xx * 3 + c] = 0 if v < 0 else (255 if v > 255 else v)


@_compiled
def _emit_row(row, y, lut, out):
    """Resized row y [W*3] uint8 -> lut values in the flat output laid out as
    [H/(P*M), W/(P*M), M, M, 3, T, P*P]: each pixel lands in its patch, once per temporal slot."""
    w = row.shape[0] // 3
    pp = PATCH * PATCH
    chan = TEMPORAL * pp
    col = 3 * chan
    block = MERGE * MERGE * col
    blocks_w = w // (PATCH * MERGE)
    base = (y // (PATCH * MERGE)) * blocks_w * block + ((y // PATCH) % MERGE) * MERGE * col + (y % PATCH) * PATCH
    for bw in range(blocks_w):
        for mc in range(MERGE):
            x0 = (bw * MERGE + mc) * PATCH
            o = base + bw * block + mc * col
            for c in range(3):
                table = lut[c]
                oc = o + c * chan
                for px in range(PATCH):
                    v = table[row[(x0 + px) * 3 + c]]
                    for t in range(TEMPORAL):
                        out[oc + t * pp + px] = v


@_compiled
def _resize_to_patches(src, hb, hk, vb, vk, order, lo, hi, new_w, lut, out):
    w3 = src.shape[1]
    rows = _TILE_ROWS
    if order == NONE:
        for y in range(lo, hi):
            _emit_row(src[y], y, lut, out)
        return
    if order == V_ONLY:
        acc = np.empty(w3, np.int32)
        row = np.empty(w3, np.uint8)
        for y in range(lo, hi):
            _vertical_row(src, vb[y, 0], vb[y, 1], vk[y], acc, row)
            _emit_row(row, y, lut, out)
        return
    tile = np.empty((w3 // 3, rows * 3), np.uint8)
    acc_h = np.empty(rows * 3, np.int32)
    block = np.empty((rows, new_w * 3), np.uint8)
    if order == H_ONLY:
        for a in range(lo, hi, rows):
            b = min(hi, a + rows)
            _horizontal_rows(src, a, b, hb, hk, tile, acc_h, block)
            for r in range(b - a):
                _emit_row(block[r], a + r, lut, out)
        return
    if order == V_THEN_H:
        acc = np.empty(w3, np.int32)
        part = np.empty((rows, w3), np.uint8)
        for a in range(lo, hi, rows):
            b = min(hi, a + rows)
            for y in range(a, b):
                _vertical_row(src, vb[y, 0], vb[y, 1], vk[y], acc, part[y - a])
            _horizontal_rows(part, 0, b - a, hb, hk, tile, acc_h, block)
            for r in range(b - a):
                _emit_row(block[r], a + r, lut, out)
        return
    # H_THEN_V: the input rows these output rows need, through the horizontal pass, then down
    first = vb[lo, 0]
    last = vb[hi - 1, 0] + vb[hi - 1, 1]
    mid = np.empty((last - first, new_w * 3), np.uint8)
    _horizontal_rows(src, first, last, hb, hk, tile, acc_h, mid)
    acc = np.empty(new_w * 3, np.int32)
    row = np.empty(new_w * 3, np.uint8)
    for y in range(lo, hi):
        _vertical_row(mid, vb[y, 0] - first, vb[y, 1], vk[y], acc, row)
        _emit_row(row, y, lut, out)
