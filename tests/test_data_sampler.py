"""Stateful distributed sampler: disjoint DP shards, order from seed+epoch, exact mid-epoch resume;
the length-grouped samplers keep all of that and narrow the length spread of each micro-batch."""
import numpy as np
import pytest

from mindspeed_ms.data.sampler import (BucketBatchSampler, LengthGroupedSampler, StatefulDistributedSampler,
                                       StreamingShardSampler)


def test_two_ranks_cover_without_overlap():
    n, mbs = 50, 3
    seen = []
    for rank in range(2):
        s = StatefulDistributedSampler(n, mbs, dp_size=2, dp_rank=rank, seed=5)
        batches = list(s)
        assert len(batches) == len(s) == (n // 2) // mbs and all(len(b) == mbs for b in batches)
        seen.append([i for b in batches for i in b])
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 2 * (n // 2) // mbs * mbs


def test_order_depends_on_seed_and_epoch_only():
    a = StatefulDistributedSampler(40, 2, seed=1)
    b = StatefulDistributedSampler(40, 2, seed=1)
    e0, e1 = list(a), list(a)
    assert e0 == list(b) and e0 != e1 and sorted(sum(e0, [])) == list(range(40))
    assert list(StatefulDistributedSampler(40, 2, seed=2)) != e0
    assert list(StatefulDistributedSampler(40, 2, shuffle=False))[0] == [0, 1]


def test_resume_mid_epoch_identical():
    full = StatefulDistributedSampler(37, 2, dp_size=2, dp_rank=1, seed=9)
    expected = list(full) + list(full)  # two epochs
    s = StatefulDistributedSampler(37, 2, dp_size=2, dp_rank=1, seed=9)
    it = iter(s)
    got = [next(it) for _ in range(5)]
    state = s.state_dict()
    r = StatefulDistributedSampler(37, 2, dp_size=2, dp_rank=1, seed=9)
    r.load_state_dict(state)
    got += list(r) + list(r)
    assert got == expected
    with pytest.raises(ValueError, match="dp_size=2 but this run has dp_size=4"):
        StatefulDistributedSampler(37, 2, dp_size=4, dp_rank=1, seed=9).load_state_dict(state)


def test_no_drop_last_pads_and_errors():
    s = StatefulDistributedSampler(5, 2, dp_size=2, dp_rank=1, drop_last=False)
    assert sum(len(b) for b in s) == 3
    with pytest.raises(ValueError, match="fewer than one global step"):
        StatefulDistributedSampler(3, 2, dp_size=2)


def test_streaming_shards_and_resume():
    stream = list(range(23))
    a, b = StreamingShardSampler(2, 2, 0), StreamingShardSampler(2, 2, 1)
    ba, bb = list(a.batches(stream)), list(b.batches(stream))
    assert not {x for q in ba for x in q} & {x for q in bb for x in q}
    s = StreamingShardSampler(2, 2, 1)
    gen = s.batches(stream)
    first = [next(gen), next(gen)]
    r = StreamingShardSampler(2, 2, 1)
    r.load_state_dict(s.state_dict())
    assert first + list(r.batches(stream)) == bb


def test_build_sampler_from_config():
    from mindspeed_ms.config.data_config import parse_data_config
    from mindspeed_ms.data.sampler import build_sampler

    def cfg(**dl):
        return parse_data_config({"dataset_param": {"basic_parameters": {"dataset": "x.json"}},
                                  "dataloader_param": dl})
    assert list(build_sampler(cfg(sampler_type="SequentialSampler"), 6, 2))[0] == [0, 1]
    s = build_sampler(cfg(sampler_type="stateful_distributed_sampler"), 6, 2, seed=3)
    assert s.shuffle and list(s) == list(StatefulDistributedSampler(6, 2, seed=3))


# ---- length grouping --------------------------------------------------------------------------------
def _lengths(n=2000, seed=0):
    # long-tailed like real SFT data: many short samples, some long ones
    return np.random.default_rng(seed).lognormal(5.5, 0.8, n).astype(np.int64) + 16


def _mean_spread(batches, lengths):
    return float(np.mean([lengths[b].max() - lengths[b].min() for b in batches]))


@pytest.mark.parametrize("cls", [LengthGroupedSampler, BucketBatchSampler])
def test_length_grouping_narrows_micro_batches(cls):
    lengths, mbs, dp = _lengths(), 4, 2
    plain = [b for r in range(dp) for b in StatefulDistributedSampler(len(lengths), mbs, dp, r, seed=7)]
    grouped = [b for r in range(dp) for b in cls(lengths, mbs, dp, r, seed=7)]
    assert _mean_spread(grouped, lengths) < 0.1 * _mean_spread(plain, lengths)
    # one step (every rank's micro-batch at the same index) holds neighbours in length, too
    steps = [cls(lengths, mbs, dp, r, seed=7) for r in range(dp)]
    per_step = [np.concatenate(b) for b in zip(*steps)]
    assert _mean_spread(per_step, lengths) < 0.1 * _mean_spread(plain, lengths)


@pytest.mark.parametrize("cls", [LengthGroupedSampler, BucketBatchSampler])
def test_length_grouped_shards_disjoint_and_complete(cls):
    lengths, mbs, dp = _lengths(203), 3, 4
    shards = [{i for b in cls(lengths, mbs, dp, r, seed=3) for i in b} for r in range(dp)]
    assert sum(map(len, shards)) == len(set().union(*shards)) == (203 // (mbs * dp)) * mbs * dp
    # drop_last: false keeps every sample (the last step padded by wrapping around, as torch's DistributedSampler)
    kept = [i for r in range(dp) for b in cls(lengths, mbs, dp, r, seed=3, drop_last=False) for i in b]
    assert set(kept) == set(range(203)) and len(kept) == dp * -(-203 // dp)


def test_drop_last_drops_random_samples_not_the_shortest():
    lengths = np.arange(1000)
    kept = {i for b in LengthGroupedSampler(lengths, 7, 1, 0, seed=1) for i in b}
    dropped = sorted(set(range(1000)) - kept)
    assert len(dropped) == 1000 % 7 and max(dropped) > 100


@pytest.mark.parametrize("cls", [LengthGroupedSampler, BucketBatchSampler])
def test_length_grouped_seed_epoch_and_resume(cls):
    lengths = _lengths(300)
    a, b = cls(lengths, 2, 2, 1, seed=4), cls(lengths, 2, 2, 1, seed=4)
    e0, e1 = list(a), list(a)
    assert e0 == list(b) and e0 != e1
    assert list(cls(lengths, 2, 2, 1, seed=5)) != e0
    full = cls(lengths, 2, 2, 1, seed=4)
    expected = list(full) + list(full)
    s = cls(lengths, 2, 2, 1, seed=4)
    it = iter(s)
    got = [next(it) for _ in range(40)]
    r = cls(lengths, 2, 2, 1, seed=4)
    r.load_state_dict(s.state_dict())
    assert got + list(r) + list(r) == expected
    with pytest.raises(ValueError, match="sampler=StatefulDistributedSampler"):
        r.load_state_dict(StatefulDistributedSampler(300, 2, 2, 1, seed=4).state_dict())


def test_bucket_steps_are_shuffled_across_the_epoch():
    # LengthGroupedSampler runs each mega-batch longest first; BucketBatchSampler mixes the steps
    lengths = _lengths()
    firsts = lambda s: [lengths[b].max() for b in s]  # noqa: E731
    lg, bb = firsts(LengthGroupedSampler(lengths, 4, seed=2)), firsts(BucketBatchSampler(lengths, 4, seed=2))
    falls = lambda x: np.mean(np.diff(x) <= 0)  # noqa: E731
    assert falls(lg) > 0.9 and falls(bb) < 0.7


def test_feed_order_steps_are_global_batches():
    # the training feed: DP ranks and one process with accumulation see the same micro-batches
    from mindspeed_ms.data.sampler import LengthGroupedOrder
    from mindspeed_ms.training.data_feed import DataFeed
    lengths = _lengths(400)
    order = LengthGroupedOrder(lengths, step_size=8, seed=9)
    feeds = [DataFeed(400, lambda idx: idx, 4, 2, r, 1, seed=9, order=order) for r in range(2)]
    single = DataFeed(400, lambda idx: idx, 4, 1, 0, 2, seed=9, order=order)
    for _ in range(60):
        dp_step = [mb for f in feeds for mb in f._my_slices(f._next_global())]
        assert [list(x) for x in dp_step] == [list(x) for x in single._my_slices(single._next_global())]
    plain = DataFeed(400, lambda idx: idx, 4, 1, 0, 2, seed=9)
    def spread(feed):
        return _mean_spread([mb for _ in range(40) for mb in feed._my_slices(feed._next_global())], lengths)
    assert spread(DataFeed(400, lambda idx: idx, 4, 1, 0, 2, seed=9, order=order)) < 0.2 * spread(plain)


def test_length_sampler_config_and_errors():
    from mindspeed_ms.config.data_config import DataConfigError, parse_data_config
    from mindspeed_ms.data.sampler import build_sampler

    def cfg(streaming=False, **dl):
        return parse_data_config({"dataset_param": {"basic_parameters": {"dataset": "x.json", "streaming": streaming}},
                                  "dataloader_param": dl})
    lengths = _lengths(40)
    s = build_sampler(cfg(sampler_type="LengthGroupedSampler"), 40, 2, seed=3, lengths=lengths)
    assert isinstance(s, LengthGroupedSampler) and list(s) == list(LengthGroupedSampler(lengths, 2, seed=3))
    assert isinstance(build_sampler(cfg(sampler_type="BucketBatchSampler"), 40, 2, lengths=lengths),
                      BucketBatchSampler)
    with pytest.raises(ValueError, match="LengthGroupedSampler needs one length per sample"):
        build_sampler(cfg(sampler_type="LengthGroupedSampler"), 40, 2)
    with pytest.raises(DataConfigError, match="streaming: true samples come in file order"):
        cfg(streaming=True, sampler_type="BucketBatchSampler")
