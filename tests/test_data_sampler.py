"""Stateful distributed sampler: disjoint DP shards, order from seed+epoch, exact mid-epoch resume."""
import pytest

from mindspeed_ms.data.sampler import StatefulDistributedSampler, StreamingShardSampler


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
