"""Global batches -> this rank's micro-batches, in Megatron's order, with a resumable position.

The epoch order is a permutation seeded by (--seed, epoch) (or the file order without shuffle), or
with data.json's `LengthGroupedSampler` / `BucketBatchSampler` one grouped by sample length
(`data.sampler`, whose steps are global batches here). Iteration k takes samples [k*GBS, (k+1)*GBS)
of it (an incomplete last global batch is dropped, as with drop_last); micro-step i of DP rank r
takes the slice [(i*DP + r)*mbs, (i*DP + r + 1)*mbs). So a single process with gradient
accumulation and DP ranks without it see the same micro-batch partition of every global batch,
and a resumed run continues at the same sample.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from mindspeed_ms.data.sampler import EpochOrder

Batch = Dict[str, np.ndarray]


class DataFeed:
    def __init__(self, num_samples: int, make_batch: Callable[[Sequence[int]], Batch], micro_batch_size: int,
                 dp_size: int, dp_rank: int, grad_acc_steps: int, seed: int, shuffle: bool = True,
                 val_num_samples: int = 0, make_val_batch: Optional[Callable[[Sequence[int]], Batch]] = None,
                 source: str = "the training set", order: Optional[Callable[[int], np.ndarray]] = None):
        """`order(epoch)` -> the epoch's permutation of the sample indices; default the seeded
        shuffle (`data.sampler.EpochOrder`)."""
        self.n, self.make_batch = int(num_samples), make_batch
        self.mbs, self.dp, self.rank, self.ga = micro_batch_size, dp_size, dp_rank, grad_acc_steps
        self.gbs = micro_batch_size * dp_size * grad_acc_steps
        if self.n < self.gbs:
            raise ValueError(f"{source} has {self.n} samples, fewer than one global batch ({self.gbs}); lower "
                             f"--global-batch-size or add data")
        self.seed = seed
        self.order = order or EpochOrder(self.n, seed, shuffle)
        self.val_n, self.make_val_batch = int(val_num_samples), make_val_batch
        self.epoch, self.position = 0, 0
        self._order = None
        self._shapes = set()

    # ---- order and position ----------------------------------------------------------------------
    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = self.order(self.epoch)
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


class StreamFeed:
    """`streaming: true`: global batches are read from the stream in order (no shuffle), each rank
    materialises only its own micro-batches (same partition as `DataFeed`). The position is the
    number of consumed global batches; a resumed run re-reads the (deterministic) stream and
    skips them. At the end of the stream the next epoch starts it again."""

    def __init__(self, train, val, collator, micro_batch_size: int, dp_size: int, dp_rank: int,
                 grad_acc_steps: int):
        from mindspeed_ms.data.dataset import materialize
        self.train, self.val, self.collator, self._materialize = train, val, collator, materialize
        self.mbs, self.dp, self.rank, self.ga = micro_batch_size, dp_size, dp_rank, grad_acc_steps
        self.gbs = micro_batch_size * dp_size * grad_acc_steps
        self.epoch, self.steps_done = 0, 0
        self._rows = None
        self._shapes = set()

    def _read_global(self, rows_iter):
        rows = []
        for row in rows_iter:
            rows.append(row)
            if len(rows) == self.gbs:
                return rows
        return None

    def _batches(self, ds, rows):
        out = []
        for i in range(self.ga):
            mine = rows[(i * self.dp + self.rank) * self.mbs:(i * self.dp + self.rank + 1) * self.mbs]
            b = self.collator([self._materialize(r, ds.cfg, ds.processor) for r in mine])
            self._shapes.add((tuple(b["input_ids"].shape), tuple(b["pixel_values"].shape)))
            out.append(b)
        return out

    def next_step(self):
        for _ in range(2):
            if self._rows is None:
                self._rows = self.train.rows()
                for _ in range(self.steps_done):          # resume: skip what was consumed
                    if self._read_global(self._rows) is None:
                        break
            rows = self._read_global(self._rows)
            if rows is not None:
                self.steps_done += 1
                return self._batches(self.train, rows)
            self.epoch, self.steps_done, self._rows = self.epoch + 1, 0, None
        raise ValueError(f"the streamed training set holds fewer samples than one global batch ({self.gbs})")

    def state_dict(self):
        return {"epoch": self.epoch, "stream_steps_done": self.steps_done, "global_batch_size": self.gbs}

    def load_state_dict(self, state):
        if int(state.get("global_batch_size", self.gbs)) != self.gbs:
            raise ValueError(f"cannot resume a streamed dataset with another global batch size "
                             f"({state['global_batch_size']} saved, {self.gbs} now)")
        self.epoch, self.steps_done, self._rows = int(state["epoch"]), int(state["stream_steps_done"]), None

    def skip_to(self, consumed_samples: int):
        self.steps_done, self._rows = consumed_samples // self.gbs, None

    def buckets_seen(self) -> int:
        return len(self._shapes)

    @property
    def has_val(self) -> bool:
        return self.val is not None

    def val_steps(self, max_steps: int):
        rows_iter = self.val.rows()
        for _ in range(max_steps):
            rows = self._read_global(rows_iter)
            if rows is None:
                return
            yield self._batches(self.val, rows)
