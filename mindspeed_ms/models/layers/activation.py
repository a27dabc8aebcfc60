"""Activations by name, as Cells holding their primitives. `gelu` is the exact erf form
(MindSpore's `ops.GeLU` is the tanh approximation, which HF's `nn.GELU()` is not)."""
import math

from mindspore import nn, ops


class QuickGELU(nn.Cell):
    """x * sigmoid(1.702 x) (CLIP / Qwen2-VL ViT)."""

    def __init__(self):
        super().__init__()
        self.sigmoid = ops.Sigmoid()
        self.mul = ops.Mul()

    def construct(self, x):
        return self.mul(x, self.sigmoid(x * 1.702))


class ExactGELU(nn.Cell):
    """0.5 x (1 + erf(x / sqrt(2)))."""

    def __init__(self):
        super().__init__()
        self.erf = ops.Erf()
        self.mul = ops.Mul()
        self.inv_sqrt2 = 1.0 / math.sqrt(2.0)

    def construct(self, x):
        return self.mul(x * 0.5, 1.0 + self.erf(x * self.inv_sqrt2))


class SiLU(nn.Cell):
    def __init__(self):
        super().__init__()
        self.sigmoid = ops.Sigmoid()
        self.mul = ops.Mul()

    def construct(self, x):
        return self.mul(x, self.sigmoid(x))


_ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": ExactGELU, "silu": SiLU}


def get_activation(name):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation_func '{name}'; one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()
