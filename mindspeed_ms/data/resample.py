"""PIL's bicubic resize fused with HF's rescale/normalize and Qwen2-VL's patch layout, compiled by numba.

HF's slow `Qwen2VLImageProcessor` resizes with `PIL.Image.resize(..., BICUBIC)`, then rescales,
normalizes and reorders into patches in numpy. This module computes the same float32 patches in one
compiled pass over the image, with PIL's exact integer arithmetic (Pillow's Resample.c):

- coefficients: PIL's `precompute_coeffs` in float64 (same operations in the same order, so the
  same doubles), turned into 22-bit fixed point as `normalize_coeffs_8bpc` does;
- each pass: int32 sums of uint8 pixels times coefficients, plus half, shifted right by 22 and
  clipped to 0..255 (the intermediate image is uint8 in PIL too), in PIL's pass order;
- values: every resized uint8 level goes through the processor's [3, 256] table (HF's formula);
- layout: each strip of 28 resized rows is written straight into its patches, in output order
  ([H/28, W/28, 2, 2, C, T, 14*14]).

Why it is faster than PIL + numpy: the vertical pass runs over whole rows (SIMD over width x
channels), the horizontal pass over tiles of 28 transposed rows (SIMD over rows x channels) where PIL
loops pixel by pixel, and the float32 output is written once, sequentially, with no intermediate
images. Patch, merge and temporal sizes are compile-time constants (14, 2, 2: every Qwen2-VL
checkpoint; constants made the layout loops ~2x faster than arguments); the processor uses PIL for
anything else, and compares this code with the installed PIL once per process
(`processor._compiled_resize_matches_pil`): a PIL that resizes differently is used instead, so
HF-equality never depends on this module. Compiled code is cached next to this file (numba
`cache=True`): the first call on a machine compiles for ~10 s, later processes load it in ~0.3 s.
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

# pass orders of one resize
NONE, H_ONLY, V_ONLY, H_THEN_V, V_THEN_H = range(5)


@functools.lru_cache(maxsize=512)
def bicubic_coefficients(in_size, out_size):
    """(bounds [out, 2] int32 (first input index, tap count), taps [out, ksize] int32): PIL's
    fixed-point bicubic coefficients for resizing a whole axis of `in_size` to `out_size`."""
    support = 2.0 * max(float(in_size) / out_size, 1.0)  # the bicubic filter's support is 2
    ksize = int(np.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int32)
    taps = np.zeros((out_size, ksize), np.int32)
    _coefficients(in_size, out_size, bounds, taps, np.empty(ksize, np.float64))
    return bounds, taps


def pass_order(width, height, new_width, new_height, vertical_first):
    """NONE / H_ONLY / V_ONLY / H_THEN_V / V_THEN_H for resizing (width, height) -> (new_width, new_height)."""
    need_h, need_v = width != new_width, height != new_height
    if need_h and need_v:
        return V_THEN_H if vertical_first else H_THEN_V
    return H_ONLY if need_h else V_ONLY if need_v else NONE


def resize_to_patches(src, new_height, new_width, order, lut, out, row_lo=0, row_hi=None, slot=0, fill=True):
    """Rows [row_lo, row_hi) (whole merge blocks) of `src` [H, W, 3] uint8 resized to
    (new_height, new_width) -> their normalized patches in `out`, the flat float32 output of one
    image or one group of T video frames [new_height * new_width * 3 * T] (disjoint row ranges can
    run in parallel threads). The frame fills temporal slot `slot` of every patch and, with `fill`,
    the slots after it too (an image fills all T; a video's last frame pads an incomplete group)."""
    row_hi = new_height if row_hi is None else row_hi
    h, w = src.shape[:2]
    hb, hk = bicubic_coefficients(w, new_width) if order in (H_ONLY, H_THEN_V, V_THEN_H) else _NO_PASS
    vb, vk = bicubic_coefficients(h, new_height) if order in (V_ONLY, H_THEN_V, V_THEN_H) else _NO_PASS
    src = np.ascontiguousarray(src).reshape(h, w * 3)
    src.flags.writeable = False  # one compiled specialization for PIL's read-only arrays and writable ones
    _resize_to_patches(src, hb, hk, vb, vk, order, row_lo, row_hi, new_width, lut, out, slot, fill)


_NO_PASS = (np.zeros((1, 2), np.int32), np.zeros((1, 1), np.int32))


def _compiled(fn):
    return njit(cache=True, nogil=True)(fn) if njit is not None else fn


@_compiled
def _bicubic(x):
    """PIL's bicubic filter (a = -0.5), written as Resample.c evaluates it."""
    a = -0.5
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@_compiled
def _coefficients(in_size, out_size, bounds, taps, w):
    """Resample.c's precompute_coeffs (box 0..in_size) + normalize_coeffs_8bpc: the same float64
    operations in the same order (no fast-math: numba keeps IEEE order and does not fuse), so the
    same doubles and the same fixed-point taps."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ww = 0.0
        for x in range(xmax):
            w[x] = _bicubic((x + xmin - center + 0.5) * ss)
            ww += w[x]
        for x in range(xmax):
            k = w[x] / ww if ww != 0.0 else w[x]
            taps[xx, x] = int(-0.5 + k * (1 << _BITS)) if k < 0 else int(0.5 + k * (1 << _BITS))
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax


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
def _emit_strip(rows, lut, out, o, slot, fill):
    """One strip of P*M resized rows [P*M, W*3] uint8 -> table values in HF's patch layout, written
    in order from out[o] (the strip's part of [H/(P*M), W/(P*M), M, M, 3, T, P*P]) into temporal
    slot `slot` (with `fill` copied into the later slots): sequential stores, one lookup per pixel."""
    w = rows.shape[1] // 3
    pp = PATCH * PATCH
    for bw in range(w // (PATCH * MERGE)):
        for mr in range(MERGE):
            for mc in range(MERGE):
                x0 = (bw * MERGE + mc) * PATCH
                for c in range(3):
                    table = lut[c]
                    first = o + slot * pp
                    for py in range(PATCH):
                        row = rows[mr * PATCH + py]
                        for px in range(PATCH):
                            out[first + py * PATCH + px] = table[row[(x0 + px) * 3 + c]]
                    if fill:
                        for t in range(slot + 1, TEMPORAL):
                            for q in range(pp):
                                out[o + t * pp + q] = out[first + q]
                    o += TEMPORAL * pp


@_compiled
def _resize_to_patches(src, hb, hk, vb, vk, order, lo, hi, new_w, lut, out, slot, fill):
    """Output rows lo..hi (whole strips of P*M rows) of `src` [H, W*3] resized in `order`, each strip
    finished in a small uint8 buffer and emitted into `out` at its offset."""
    w3 = src.shape[1]
    rows = PATCH * MERGE
    per_row = new_w * 3 * TEMPORAL  # output floats per resized row
    strip = np.empty((rows, new_w * 3), np.uint8)
    tile = np.empty((w3 // 3, rows * 3), np.uint8)
    acc_h = np.empty(rows * 3, np.int32)
    acc_v = np.empty(max(w3, new_w * 3), np.int32)
    part = np.empty((rows, w3), np.uint8)
    first = 0
    mid = strip
    if order == H_THEN_V:  # the input rows these output rows need, through the horizontal pass once
        first = vb[lo, 0]
        mid = np.empty((vb[hi - 1, 0] + vb[hi - 1, 1] - first, new_w * 3), np.uint8)
        _horizontal_rows(src, first, first + mid.shape[0], hb, hk, tile, acc_h, mid)
    for a in range(lo, hi, rows):
        if order == NONE:
            _emit_strip(src[a:a + rows], lut, out, a * per_row, slot, fill)
            continue
        if order == H_ONLY:
            _horizontal_rows(src, a, a + rows, hb, hk, tile, acc_h, strip)
        elif order == V_ONLY:
            for r in range(rows):
                _vertical_row(src, vb[a + r, 0], vb[a + r, 1], vk[a + r], acc_v, strip[r])
        elif order == V_THEN_H:
            for r in range(rows):
                _vertical_row(src, vb[a + r, 0], vb[a + r, 1], vk[a + r], acc_v, part[r])
            _horizontal_rows(part, 0, rows, hb, hk, tile, acc_h, strip)
        else:
            for r in range(rows):
                _vertical_row(mid, vb[a + r, 0] - first, vb[a + r, 1], vk[a + r], acc_v, strip[r])
        _emit_strip(strip, lut, out, a * per_row, slot, fill)
