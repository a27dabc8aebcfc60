"""Stateful distributed micro-batch sampling, resumable mid-epoch.

Each epoch's order is a permutation drawn from `seed + epoch` (numpy PCG64, independent of any
global RNG); DP rank r takes positions r, r + dp, r + 2*dp, ... of it, so ranks see disjoint
shards, and yields them in micro-batches. `state_dict()` records the epoch and how many
micro-batches this rank has consumed; `load_state_dict()` resumes with exactly the batches the
uninterrupted run would have produced next.
"""
import numpy as np


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
        self.epoch, self.batches_done = 0, 0
        if self.batches_per_epoch() == 0:
            raise ValueError(f"{num_samples} samples are fewer than one global step of micro-batches "
                             f"({micro_batch_size} x {dp_size} DP ranks)")

    def _order(self, epoch):
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng(self.seed + epoch).permutation(self.num_samples)

    def _rank_indices(self, epoch):
        order = self._order(epoch)
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

    def state_dict(self):
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed,
                "num_samples": self.num_samples, "dp_size": self.dp_size,
                "micro_batch_size": self.micro_batch_size, "shuffle": self.shuffle}

    def load_state_dict(self, state):
        for key in ("num_samples", "dp_size", "micro_batch_size", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data position: the checkpoint has {key}={state[key]} but this run "
                                 f"has {key}={getattr(self, key)} (same dataset, --seed, DP size and micro-batch size are needed)")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])


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


def build_sampler(cfg, num_samples, micro_batch_size, dp_size=1, dp_rank=0, seed=1234):
    """The sampler for a DataConfig's `dataloader_param`: `SequentialSampler` (or shuffle: false) keeps
    file order; every other sampler_type is the seeded, resumable shuffle above; streaming datasets
    get `StreamingShardSampler`. (LengthGroupedSampler / BucketBatchSampler do not group by length
    here: the collator's length buckets already bound the shapes.)"""
    d = cfg.dataloader_param
    if cfg.basic_parameters.streaming:
        return StreamingShardSampler(micro_batch_size, dp_size, dp_rank)
    shuffle = d.shuffle and d.sampler_type != "SequentialSampler"
    return StatefulDistributedSampler(num_samples, micro_batch_size, dp_size, dp_rank, seed, shuffle, d.drop_last)
