"""Global batches -> this rank's micro-batches, in Megatron's order, with a resumable position.

The epoch order is a permutation seeded by (--seed, epoch) (or the file order without shuffle).
Iteration k takes samples [k*GBS, (k+1)*GBS) of it (an incomplete last global batch is dropped,
as with drop_last); micro-step i of DP rank r takes the slice [(i*DP + r)*mbs, (i*DP + r + 1)*mbs).
So a single process with gradient accumulation and DP ranks without it see the same micro-batch
partition of every global batch, and a resumed run continues at the same sample.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

Batch = Dict[str, np.ndarray]


class DataFeed:
    def __init__(self, num_samples: int, make_batch: Callable[[Sequence[int]], Batch], micro_batch_size: int,
                 dp_size: int, dp_rank: int, grad_acc_steps: int, seed: int, shuffle: bool = True,
                 val_num_samples: int = 0, make_val_batch: Optional[Callable[[Sequence[int]], Batch]] = None,
                 source: str = "the training set"):
        self.n, self.make_batch = int(num_samples), make_batch
        self.mbs, self.dp, self.rank, self.ga = micro_batch_size, dp_size, dp_rank, grad_acc_steps
        self.gbs = micro_batch_size * dp_size * grad_acc_steps
        if self.n < self.gbs:
            raise ValueError(f"{source} has {self.n} samples, fewer than one global batch ({self.gbs}); lower "
                             f"--global-batch-size or add data")
        self.seed, self.shuffle = seed, shuffle
        self.val_n, self.make_val_batch = int(val_num_samples), make_val_batch
        self.epoch, self.position = 0, 0
        self._order = None
        self._shapes = set()

    # ---- order and position ----------------------------------------------------------------------
    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = (np.random.default_rng(self.seed + self.epoch).permutation(self.n) if self.shuffle
                           else np.arange(self.n))
        return self._order

    def _next_global(self) -> np.ndarray:
        if self.position + self.gbs > self.n:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        idx = self._epoch_order()[self.position:self.position + self.gbs]
        self.position += self.gbs
        return idx

    def _my_slices(self, global_idx: np.ndarray) -> List[np.ndarray]:
        return [global_idx[(i * self.dp + self.rank) * self.mbs:(i * self.dp + self.rank + 1) * self.mbs]
                for i in range(self.ga)]

    def next_step(self) -> List[Batch]:
        out = []
        for idx in self._my_slices(self._next_global()):
            batch = self.make_batch([int(i) for i in idx])
            self._shapes.add((tuple(batch["input_ids"].shape), tuple(batch["pixel_values"].shape)))
            out.append(batch)
        return out

    def state_dict(self) -> Dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_samples": self.n,
                "global_batch_size": self.gbs}

    def load_state_dict(self, state: Dict):
        if int(state.get("global_batch_size", self.gbs)) != self.gbs or int(state.get("num_samples", self.n)) != self.n:
            # another batch size or dataset: continue from the consumed-sample count instead
            self.skip_to(int(state.get("consumed_samples", 0)))
            return
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None

    def skip_to(self, consumed_samples: int):
        per_epoch = (self.n // self.gbs) * self.gbs
        self.epoch, self.position, self._order = consumed_samples // per_epoch, consumed_samples % per_epoch, None

    def buckets_seen(self) -> int:
        return len(self._shapes)

    # ---- validation --------------------------------------------------------------------------------
    @property
    def has_val(self) -> bool:
        return self.val_n > 0 and self.make_val_batch is not None

    def val_steps(self, max_steps: int) -> Iterator[List[Batch]]:
        """Up to `max_steps` global batches of the validation set, in file order, from its start."""
        for k in range(min(max_steps, self.val_n // self.gbs)):
            idx = np.arange(k * self.gbs, (k + 1) * self.gbs)
            batches = [self.make_val_batch([int(i) for i in s]) for s in self._my_slices(idx)]
            for b in batches:
                self._shapes.add((tuple(b["input_ids"].shape), tuple(b["pixel_values"].shape)))
            yield batches
