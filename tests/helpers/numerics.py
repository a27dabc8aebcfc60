"""Tolerances that hold on any CPU generation.

Library kernels (MindSpore's, torch's, numpy's BLAS) change summation order, vector width and FMA
use between CPU generations, so two correct implementations agree only up to rounding that scales
with the magnitude of the values involved. These helpers compare relative to that scale: an error
in the math (a wrong rope base, a swapped GLU half, a missing term) moves results by a large
fraction of the scale and still fails.
"""
import numpy as np


def scale_of(x):
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(x).max()) if x.size else 0.0


def assert_close_scaled(actual, desired, rtol, err_msg=""):
    """Every element within rtol * max|desired| (the tensor's scale) of desired."""
    a = np.asarray(actual, dtype=np.float64)
    d = np.asarray(desired, dtype=np.float64)
    assert a.shape == d.shape, f"{err_msg} shapes differ: {a.shape} vs {d.shape}"
    scale = max(scale_of(d), np.finfo(np.float32).tiny)
    err = float(np.abs(a - d).max()) if a.size else 0.0
    assert err <= rtol * scale, f"{err_msg} max |diff| {err:.3g} > {rtol:g} x scale {scale:.3g}"


def max_rel_to_scale(actual, desired):
    """max |actual - desired| / max |desired|: the figure assert_close_scaled bounds."""
    d = np.asarray(desired, dtype=np.float64)
    return float(np.abs(np.asarray(actual, dtype=np.float64) - d).max()) / max(scale_of(d), np.finfo(np.float32).tiny)
