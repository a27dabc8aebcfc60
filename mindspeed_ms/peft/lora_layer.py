"""A LoRA adapter Cell wrapped around one of the model's `Linear` layers.

    y = base(x) + gate * (alpha / r) * dropout(x) @ A^T @ B^T

`A` [r, in] starts Kaiming-uniform (the peft / torch `kaiming_uniform_(a=sqrt(5))` bound
1/sqrt(in)), `B` [out, r] starts at zero, so a fresh adapter changes nothing. The base layer is
kept whole (its own MatMul / BiasAdd primitives keep their shard strategies, under `base_layer`) and
its parameters keep their MindSpeed-MM names; the adapter's are named as peft names them in the
checkpoints MindSpeed-MM writes: `<module>.lora_A.default.weight`, `<module>.lora_B.default.weight`.

`gate` is one scalar Parameter shared by every adapter of a model (not trained, not saved): 1 runs
the adapters, 0 turns them all off. It is read when a compiled graph runs, so the DPO reference
pass (the base model) and the policy pass share one copy of the weights and need no recompilation.
With the gate at 0 the adapter term is exactly 0 and the output equals the base layer's bitwise.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

ADAPTER = "default"


def lora_param_names(module: str):
    """(A name, B name) of the adapter on the Linear whose weight is `<module>.weight`."""
    return f"{module}.lora_A.{ADAPTER}.weight", f"{module}.lora_B.{ADAPTER}.weight"


def kaiming_uniform_a(r: int, in_features: int, rng: np.random.Generator) -> np.ndarray:
    """peft's init of lora_A: torch's kaiming_uniform_(a=sqrt(5)) on [r, in] -> U(-1/sqrt(in), 1/sqrt(in))."""
    gain = math.sqrt(2.0 / (1 + 5.0))
    bound = gain * math.sqrt(3.0 / in_features)
    return rng.uniform(-bound, bound, size=(r, in_features)).astype(np.float32)


class LoRALinear(nn.Cell):
    """`base` (a `models.layers.Linear`) plus a rank-`r` adapter scaled by `alpha / r`."""

    def __init__(self, base, module: str, r: int, alpha: float, dropout: float, gate: Parameter,
                 rng: np.random.Generator):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.module = module
        self.r, self.alpha = r, alpha
        self.scaling = float(alpha) / float(r)
        dtype = base.weight.dtype
        a_name, b_name = lora_param_names(module)
        self.lora_a = Parameter(Tensor(kaiming_uniform_a(r, self.in_features, rng), dtype), name=a_name)
        self.lora_b = Parameter(Tensor(np.zeros((self.out_features, r), np.float32), dtype), name=b_name)
        self.gate = gate
        self.use_dropout = dropout > 0
        self.dropout = nn.Dropout(p=dropout) if self.use_dropout else None
        if self.use_dropout:
            # Cells start in inference mode, where nn.Dropout is the identity: an adapter is built
            # for training, so its dropout starts on; validation compiles its own graph inside
            # `training.train_step.inference_mode`, where it is off (the mode is read at compile time)
            self.dropout.set_train(True)
        # one primitive per step of the adapter, so that the shard plan can give each a strategy
        # (parallel/shard_plan.py; on CPU they run as the plain ops)
        self.matmul_a = ops.MatMul(transpose_b=True)
        self.matmul_b = ops.MatMul(transpose_b=True)
        self.mul_scale = ops.Mul()
        self.add_delta = ops.Add()
        self.reshape = ops.Reshape()

    def construct(self, x):
        y = self.base_layer(x)
        h = self.reshape(x, (-1, self.in_features))
        if self.use_dropout:
            h = self.dropout(h)
        delta = self.matmul_b(self.matmul_a(h, self.lora_a), self.lora_b)
        delta = self.mul_scale(delta, (self.gate * self.scaling).astype(delta.dtype))
        out = self.add_delta(self.reshape(y, (-1, self.out_features)), delta)
        return self.reshape(out, y.shape)
