"""Epoch orders and stateful distributed micro-batch sampling, resumable mid-epoch.

An *epoch order* is a permutation of the dataset indices drawn from `seed + epoch` (numpy PCG64,
independent of any global RNG). Its consumer cuts it into *steps* of `step_size` consecutive
positions (the training feed: one global batch; `StatefulDistributedSampler`: one micro-batch of
every DP rank) and drops an incomplete last step, so only the first `n // step_size * step_size`
positions are used (`drop_last`).

- `EpochOrder`: the seeded shuffle, or the file order without shuffle.
- `LengthGroupedOrder` (sampler_type `LengthGroupedSampler`, HF Trainer / LLaVA / MindSpeed-MM
  semantics): the permutation's used part is split into mega-batches of `megabatch_steps` steps,
  each mega-batch is sorted by length (longest first) and keeps its place, so consecutive
  micro-batches, and with them every DP rank's micro-batch at a step, hold samples of similar
  length. `megabatch_steps` defaults to HF's rule, min(50, steps per epoch // 4) and at least 1.
  Mega-batches are whole steps so that a global batch never straddles two of them, and the rule
  depends on the global batch size only (not on how it splits into DP ranks and accumulation
  steps), so DP workers and one process with gradient accumulation still see the same
  micro-batches (docs/architecture.md, "Sample order under data parallel").
- `BucketBatchOrder` (sampler_type `BucketBatchSampler`): the same sorted windows, then cut into
  steps and the steps shuffled over the whole epoch, so a step is drawn from one length bucket
  but long and short steps alternate at random instead of running long-to-short in each window.

The samples dropped by `drop_last` are chosen before grouping (the permutation's tail), so they
are random ones rather than the shortest of the last window; they stay at the end of the order,
ungrouped, for consumers that keep them (`drop_last: false`).

`StatefulDistributedSampler` (and its length-grouped forms `LengthGroupedSampler`,
`BucketBatchSampler`): DP rank r takes positions r, r + dp, r + 2*dp, ... of the epoch order, so
ranks see disjoint shards, and yields them in micro-batches. `state_dict()` records the epoch and
how many micro-batches this rank has consumed; `load_state_dict()` resumes with exactly the
batches the uninterrupted run would have produced next.
"""
import numpy as np

from mindspeed_ms.config.data_config import LENGTH_SAMPLERS


class EpochOrder:
    """The seeded permutation of `num_samples` indices for an epoch, or the file order."""

    def __init__(self, num_samples, seed=1234, shuffle=True):
        if num_samples <= 0:
            raise ValueError("the dataset is empty: nothing to sample")
        self.num_samples, self.seed, self.shuffle = int(num_samples), seed, shuffle

    def _permutation(self, rng):
        return rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)

    def __call__(self, epoch):
        return self._permutation(np.random.default_rng(self.seed + epoch))


class LengthGroupedOrder(EpochOrder):
    """Mega-batches of `megabatch_steps` steps, each sorted by length, longest first (module docstring)."""

    def __init__(self, lengths, step_size, seed=1234, shuffle=True, megabatch_steps=None):
        lengths = np.asarray(lengths)
        super().__init__(len(lengths), seed, shuffle)
        if lengths.ndim != 1 or (lengths < 0).any():
            raise ValueError("sample lengths must be one non-negative number per sample")
        if step_size <= 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.lengths, self.step_size = lengths, int(step_size)
        self.steps = self.num_samples // self.step_size
        if megabatch_steps is None:
            megabatch_steps = min(50, max(1, self.steps // 4))
        if megabatch_steps <= 0:
            raise ValueError(f"megabatch_steps must be positive, got {megabatch_steps}")
        self.megabatch_steps = int(megabatch_steps)

    def _sorted_windows(self, head):
        """`head` with each window of `megabatch_steps` steps sorted by length, longest first (a
        stable sort, so equal lengths keep their random order)."""
        w = self.megabatch_steps * self.step_size
        return np.concatenate([win[np.argsort(-self.lengths[win], kind="stable")]
                               for win in np.split(head, range(w, len(head), w))])

    def _arrange(self, windows, rng):
        return windows

    def __call__(self, epoch):
        rng = np.random.default_rng(self.seed + epoch)
        order = self._permutation(rng)
        used = self.steps * self.step_size
        return np.concatenate([self._arrange(self._sorted_windows(order[:used]), rng), order[used:]])


class BucketBatchOrder(LengthGroupedOrder):
    """The sorted windows of `LengthGroupedOrder`, cut into steps, the steps shuffled over the epoch."""

    def _arrange(self, windows, rng):
        steps = windows.reshape(self.steps, self.step_size)
        return (steps[rng.permutation(self.steps)] if self.shuffle else steps).reshape(-1)


def _check_lengths(sampler_type, lengths, num_samples):
    if lengths is None or len(lengths) != num_samples:
        raise ValueError(f"sampler_type {sampler_type} needs one length per sample ({num_samples} samples), got "
                         f"{'none' if lengths is None else len(lengths)}")


_LENGTH_ORDERS = {"LengthGroupedSampler": LengthGroupedOrder, "BucketBatchSampler": BucketBatchOrder}


def _shuffles(sampler_type, shuffle):
    return shuffle and sampler_type != "SequentialSampler"


def sample_order(sampler_type, shuffle, num_samples, seed, step_size, lengths=None):
    """The `EpochOrder` for a data.json `sampler_type` (`SequentialSampler` never shuffles)."""
    shuffle = _shuffles(sampler_type, shuffle)
    if sampler_type not in LENGTH_SAMPLERS:
        return EpochOrder(num_samples, seed, shuffle)
    _check_lengths(sampler_type, lengths, num_samples)
    return _LENGTH_ORDERS[sampler_type](lengths, step_size, seed, shuffle)


def feed_order(cfg, dataset, seed, global_batch_size):
    """The training feed's `EpochOrder` for a DataConfig's `dataloader_param` (steps = global
    batches); a length sampler reads `dataset.lengths()`."""
    d = cfg.dataloader_param
    lengths = dataset.lengths() if d.sampler_type in LENGTH_SAMPLERS else None
    return sample_order(d.sampler_type, d.shuffle, len(dataset), seed, global_batch_size, lengths)


class StatefulDistributedSampler:
    """Yields lists of `micro_batch_size` dataset indices for one DP rank, epoch after epoch.

    Iterating once runs to the end of the current epoch (from the restored position) and then
    moves the sampler to the next epoch, so `for epoch ...: for batch in sampler:` just works.
    """

    def __init__(self, num_samples, micro_batch_size=1, dp_size=1, dp_rank=0, seed=1234, shuffle=True,
                 drop_last=True):
        if num_samples <= 0:
            raise ValueError("the dataset is empty: nothing to sample")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is outside 0..{dp_size - 1}")
        if micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        self.num_samples, self.micro_batch_size = num_samples, micro_batch_size
        self.dp_size, self.dp_rank, self.seed = dp_size, dp_rank, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch_order = EpochOrder(num_samples, seed, shuffle)
        self.epoch, self.batches_done = 0, 0
        if self.batches_per_epoch() == 0:
            raise ValueError(f"{num_samples} samples are fewer than one global step of micro-batches "
                             f"({micro_batch_size} x {dp_size} DP ranks)")

    def _rank_indices(self, epoch):
        order = self.epoch_order(epoch)
        per_rank = self.num_samples // self.dp_size
        if not self.drop_last and self.num_samples % self.dp_size:
            per_rank += 1  # pad by wrapping around, as torch's DistributedSampler does
            order = np.concatenate([order, order[: per_rank * self.dp_size - self.num_samples]])
        return order[self.dp_rank: per_rank * self.dp_size: self.dp_size]

    def batches_per_epoch(self):
        n = len(self._rank_indices(0))
        return n // self.micro_batch_size if self.drop_last else -(-n // self.micro_batch_size)

    def __len__(self):
        return self.batches_per_epoch()

    def set_epoch(self, epoch):
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def __iter__(self):
        idx = self._rank_indices(self.epoch)
        total = self.batches_per_epoch()
        while self.batches_done < total:
            b = self.batches_done
            batch = idx[b * self.micro_batch_size:(b + 1) * self.micro_batch_size]
            self.batches_done += 1
            yield [int(i) for i in batch]
        self.epoch, self.batches_done = self.epoch + 1, 0

    @property
    def consumed_samples(self):
        """Samples consumed by this rank in the current epoch."""
        return self.batches_done * self.micro_batch_size

    @property
    def sampler(self):
        return type(self).__name__

    def state_dict(self):
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "num_samples": self.num_samples, "dp_size": self.dp_size,
                "micro_batch_size": self.micro_batch_size, "shuffle": self.shuffle, "sampler": self.sampler}

    def load_state_dict(self, state):
        for key in ("num_samples", "dp_size", "micro_batch_size", "seed", "shuffle", "sampler"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data position: the checkpoint has {key}={state[key]} but this run "
                                 f"has {key}={getattr(self, key)} (same dataset, --seed, DP size, micro-batch size "
                                 f"and sampler_type are needed)")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])


class LengthGroupedSampler(StatefulDistributedSampler):
    """`StatefulDistributedSampler` over a `LengthGroupedOrder`: a step is one micro-batch of every
    DP rank, so each rank's micro-batch holds neighbours of a length-sorted mega-batch."""
    order_class = LengthGroupedOrder

    def __init__(self, lengths, micro_batch_size=1, dp_size=1, dp_rank=0, seed=1234, shuffle=True, drop_last=True,
                 megabatch_steps=None):
        super().__init__(len(lengths), micro_batch_size, dp_size, dp_rank, seed, shuffle, drop_last)
        self.epoch_order = self.order_class(lengths, micro_batch_size * dp_size, seed, shuffle, megabatch_steps)


class BucketBatchSampler(LengthGroupedSampler):
    """`StatefulDistributedSampler` over a `BucketBatchOrder`: every step's micro-batches come from one
    length bucket, the steps in seeded random order."""
    order_class = BucketBatchOrder


class StreamingShardSampler:
    """For `streaming: true`: rank r keeps stream items r, r + dp, ... and groups them in micro-batches.
    `state_dict()` counts consumed micro-batches; a resumed run skips that many (re-reading the
    stream, which is deterministic), so it continues exactly where it stopped."""

    def __init__(self, micro_batch_size=1, dp_size=1, dp_rank=0):
        self.micro_batch_size, self.dp_size, self.dp_rank = micro_batch_size, dp_size, dp_rank
        self.epoch, self.batches_done = 0, 0

    def batches(self, stream):
        skip, batch, n = self.batches_done, [], 0
        for i, item in enumerate(stream):
            if i % self.dp_size != self.dp_rank:
                continue
            batch.append(item)
            if len(batch) == self.micro_batch_size:
                if n >= skip:
                    self.batches_done += 1
                    yield batch
                n, batch = n + 1, []
        self.epoch, self.batches_done = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "batches_done": self.batches_done, "dp_size": self.dp_size,
                "micro_batch_size": self.micro_batch_size}

    def load_state_dict(self, state):
        if state.get("dp_size") != self.dp_size or state.get("micro_batch_size") != self.micro_batch_size:
            raise ValueError("cannot resume the streaming position with a different DP size or micro-batch size")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])


def build_sampler(cfg, num_samples, micro_batch_size, dp_size=1, dp_rank=0, seed=1234, lengths=None):
    """The sampler for a DataConfig's `dataloader_param`: `SequentialSampler` (or shuffle: false) keeps
    file order; `LengthGroupedSampler` / `BucketBatchSampler` group by `lengths` (one per sample,
    `MultimodalDataset.lengths()`); every other sampler_type is the seeded, resumable shuffle above.
    Streaming datasets get `StreamingShardSampler` (data.json validation rejects a length sampler
    with `streaming: true`: a stream's lengths are unknown before it is read)."""
    d = cfg.dataloader_param
    if cfg.basic_parameters.streaming:
        return StreamingShardSampler(micro_batch_size, dp_size, dp_rank)
    shuffle = _shuffles(d.sampler_type, d.shuffle)
    if d.sampler_type in LENGTH_SAMPLERS:
        _check_lengths(d.sampler_type, lengths, num_samples)
        cls = {"LengthGroupedSampler": LengthGroupedSampler, "BucketBatchSampler": BucketBatchSampler}[d.sampler_type]
        return cls(lengths, micro_batch_size, dp_size, dp_rank, seed, shuffle, d.drop_last)
    return StatefulDistributedSampler(num_samples, micro_batch_size, dp_size, dp_rank, seed, shuffle, d.drop_last)
