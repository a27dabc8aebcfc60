"""Learning-rate schedule with Megatron's OptimizerParamScheduler formula.

Megatron counts schedule steps in samples: after each optimizer step the scheduler advances by
the global batch size, warm-up and decay lengths are iterations x global batch size, and the lr
applied at iteration k (1-based) is the one for (k-1) x GBS consumed samples. A warm-up therefore
starts at `lr_warmup_init` (0 by default) on the first step, exactly as in MindSpeed-MM.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class LRSchedule:
    max_lr: float
    min_lr: float
    decay_style: str          # constant | linear | cosine
    warmup_steps: float       # in samples
    decay_steps: float        # in samples
    init_lr: float = 0.0
    num_steps: float = 0.0    # samples consumed so far

    def __post_init__(self):
        if self.decay_style not in ("constant", "linear", "cosine"):
            raise ValueError(f"--lr-decay-style {self.decay_style!r}: use constant, linear or cosine")
        if self.min_lr > self.max_lr:
            raise ValueError(f"--min-lr {self.min_lr} is above --lr {self.max_lr}")
        if self.decay_steps <= self.warmup_steps and self.decay_style != "constant":
            raise ValueError(f"the warm-up ({self.warmup_steps:g} samples) is not shorter than the decay "
                             f"({self.decay_steps:g} samples): shorten the warm-up or lengthen --lr-decay-iters")

    @classmethod
    def from_args(cls, args) -> "LRSchedule":
        gbs = args.global_batch_size
        decay_iters = args.lr_decay_iters if args.lr_decay_iters is not None else args.train_iters
        decay_steps = decay_iters * gbs
        if args.lr_warmup_fraction is not None:
            warmup_steps = args.lr_warmup_fraction * decay_steps
        else:
            warmup_steps = args.lr_warmup_iters * gbs
        return cls(max_lr=args.lr, min_lr=args.min_lr, decay_style=args.lr_decay_style,
                   warmup_steps=warmup_steps, decay_steps=decay_steps, init_lr=args.lr_warmup_init)

    def get_lr(self) -> float:
        if self.warmup_steps > 0 and self.num_steps <= self.warmup_steps:
            return self.init_lr + (self.max_lr - self.init_lr) * float(self.num_steps) / float(self.warmup_steps)
        if self.decay_style == "constant":
            return self.max_lr
        if self.num_steps > self.decay_steps:
            return self.min_lr
        ratio = float(self.num_steps - self.warmup_steps) / float(self.decay_steps - self.warmup_steps)
        if self.decay_style == "linear":
            coeff = 1.0 - ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def step(self, increment: int):
        self.num_steps += increment

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict, override_from_args: bool = True):
        """Restore the position; the shape of the schedule comes from the current flags (Megatron's
        override behaviour), so only the consumed-sample count is taken from the checkpoint."""
        if override_from_args:
            self.num_steps = float(state["num_steps"])
        else:
            for k, v in state.items():
                setattr(self, k, v)
