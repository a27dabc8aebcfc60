"""Global batches -> this rank's micro-batches, in Megatron's order, with a resumable position.

The epoch order is a permutation seeded by (--seed, epoch) (or the file order without shuffle), or
with data.json's `LengthGroupedSampler` / `BucketBatchSampler` one grouped by sample length
(`data.sampler`, whose steps are global batches here). Iteration k takes samples [k*GBS, (k+1)*GBS)
of it (an incomplete last global batch is dropped, as with drop_last); micro-step i of DP rank r
takes the slice [(i*DP + r)*mbs, (i*DP + r + 1)*mbs). So a single process with gradient
accumulation and DP ranks without it see the same micro-batch partition of every global batch,
and a resumed run continues at the same sample.

Background loading (`--num-workers N`, N > 0): N threads build the micro-batches (pixels,
collation) of the next steps while the current one trains. Which samples a step holds is decided
here, from the consumed position, before any worker sees them; the workers only compute, and a
step's batches are taken in order. So batches, order, and the saved position are the same as with
N = 0 (resume drops whatever was prefetched and plans again from the restored position). Threads,
not processes: image decoding (PIL), the compiled resize (numba, nogil) and the numpy work release
the GIL, MindSpore's step runs in C++, and forking after MindSpore has started is not safe.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from mindspeed_ms.data.sampler import EpochOrder

Batch = Dict[str, np.ndarray]


class DataFeed:
    def __init__(self, num_samples: int, make_batch: Callable[[Sequence[int]], Batch], micro_batch_size: int,
                 dp_size: int, dp_rank: int, grad_acc_steps: int, seed: int, shuffle: bool = True,
                 val_num_samples: int = 0, make_val_batch: Optional[Callable[[Sequence[int]], Batch]] = None,
                 source: str = "the training set", order: Optional[Callable[[int], np.ndarray]] = None,
                 num_workers: int = 0, prefetch_steps: Optional[int] = None):
        """`order(epoch)` -> the epoch's permutation of the sample indices; default the seeded
        shuffle (`data.sampler.EpochOrder`). `num_workers` > 0: micro-batches built by that many
        threads, `prefetch_steps` steps ahead (default 2)."""
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
        if num_workers < 0:
            raise ValueError(f"--num-workers {num_workers}: give 0 (load in the training loop) or more")
        self.num_workers = int(num_workers)
        self.prefetch_steps = max(1, int(prefetch_steps if prefetch_steps is not None else 2))
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="data") if self.num_workers else None
        self._pending = deque()       # (epoch, position) after the step, [futures of its micro-batches]

    # ---- order and position ----------------------------------------------------------------------
    def _epoch_order(self, epoch=None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.order(epoch))
        return self._order[1]

    def _plan(self, epoch, position):
        """(global indices of the step at (epoch, position), (epoch, position) after it)."""
        if position + self.gbs > self.n:
            epoch, position = epoch + 1, 0
        return self._epoch_order(epoch)[position:position + self.gbs], (epoch, position + self.gbs)

    def _next_global(self) -> np.ndarray:
        idx, (self.epoch, self.position) = self._plan(self.epoch, self.position)
        return idx

    def _my_slices(self, global_idx: np.ndarray) -> List[np.ndarray]:
        return [global_idx[(i * self.dp + self.rank) * self.mbs:(i * self.dp + self.rank + 1) * self.mbs]
                for i in range(self.ga)]

    def next_step(self) -> List[Batch]:
        if self._pool is None:
            out = [self.make_batch([int(i) for i in idx]) for idx in self._my_slices(self._next_global())]
        else:
            self._fill()
            (self.epoch, self.position), futures = self._pending.popleft()
            self._fill()                    # keep the workers busy while this step trains
            out = [f.result() for f in futures]
        for batch in out:
            self._shapes.add((tuple(batch["input_ids"].shape), tuple(batch["pixel_values"].shape)))
        return out

    def _fill(self):
        """Plan and submit steps until `prefetch_steps` are pending (planned from the last pending
        step's position, or the consumed one)."""
        while len(self._pending) < self.prefetch_steps:
            at = self._pending[-1][0] if self._pending else (self.epoch, self.position)
            idx, after = self._plan(*at)
            futures = [self._pool.submit(self.make_batch, [int(i) for i in s]) for s in self._my_slices(idx)]
            self._pending.append((after, futures))

    def _drop_pending(self):
        for _, futures in self._pending:
            for f in futures:
                f.cancel()
        self._pending.clear()

    def close(self):
        """Stop the worker threads (pending batches are dropped)."""
        if self._pool is not None:
            self._drop_pending()
            self._pool.shutdown(wait=True)
            self._pool = None

    def state_dict(self) -> Dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_samples": self.n,
                "global_batch_size": self.gbs}

    def load_state_dict(self, state: Dict):
        if int(state.get("global_batch_size", self.gbs)) != self.gbs or int(state.get("num_samples", self.n)) != self.n:
            # another batch size or dataset: continue from the consumed-sample count instead
            self.skip_to(int(state.get("consumed_samples", 0)))
            return
        self._drop_pending()
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None

    def skip_to(self, consumed_samples: int):
        self._drop_pending()
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
