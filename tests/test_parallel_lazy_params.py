"""Lazy parameters on the sharded path (parallel/lazy_params.py), CPU dry mode: the model is built
without allocating weights, the plan slices it, and each rank allocates and fills only its own
slices. For tp 2 x pp 2 (world 8) every rank holds exactly the plan's slice of its stage, with the
values of mm-convert's rank file for (tp, stage); the other stage stays unallocated; a checkpoint
of another layout (tp 1 pp 1 release) gives the same slices; a fresh run draws only the slices
(tp-split parameters differ per tp rank, dp copies agree); the rank's own save writes exactly its
file; a resume fills the moments."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from test_parallel_train_setup import LAYOUTS, argv, rank_file, work  # noqa: E402,F401

from mindspeed_ms.checkpoint.mm_io import write_mm_checkpoint  # noqa: E402
from mindspeed_ms.parallel.lazy_params import allocated_bytes, local_key  # noqa: E402
from mindspeed_ms.parallel.rank_checkpoint import checkpoint_layout, commit  # noqa: E402
from mindspeed_ms.parallel.rank_params import (param_owner, rank_param_shapes, slice_for_rank,  # noqa: E402
                                               to_plan_layout)
from mindspeed_ms.parallel.train_setup import rank_coords  # noqa: E402

NAME = "tp2_pp2_fp32"
FLAGS = ("--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --global-batch-size 4", 8, [4, 0], [1, 3],
         False)


@pytest.fixture(scope="module")
def layout(work):
    LAYOUTS[NAME] = FLAGS
    yield NAME
    LAYOUTS.pop(NAME, None)


@pytest.fixture(scope="module")
def mmconv(work, layout):
    """A random model written by mm-convert's writer at tp 2 x pp 2 and at tp 1 x pp 1 (release)."""
    from mindspeed_ms.training.sharded_trainer import dry_run
    a, world = argv(work, layout)
    tr = dry_run(a, world - 1, world, lazy=True)
    from mindspeed_ms.parallel.rank_params import full_param_shapes
    rng = np.random.default_rng(7)
    # tied: mm-convert writes the output-layer copy itself
    src = {n: rng.standard_normal(shape).astype(np.float32) for n, shape in full_param_shapes(tr.plan).items()
           if n != "text_decoder.output_layer.weight"}
    write_mm_checkpoint(str(work / "lazy_tp2pp2"), "release", src, checkpoint_layout(tr.plan))
    from mindspeed_ms.checkpoint.pp_split import ParallelLayout
    write_mm_checkpoint(str(work / "lazy_tp1pp1"), "release", src, ParallelLayout.build(1, [[4]], [[4]]))
    return src


def _rank(work, layout, rank, extra=""):
    from mindspeed_ms.training.sharded_trainer import dry_run
    a, world = argv(work, layout, extra)
    return dry_run(a, rank, world, lazy=True)


def test_every_rank_holds_exactly_its_mm_convert_slice(work, layout, mmconv):
    from auto_convert import torch_format
    from mindspeed_ms.checkpoint.layout import rank_dir_name
    root = str(work / "lazy_tp2pp2")
    world = FLAGS[1]
    seen = set()
    # one rank of each (tp, stage) pair, dp 0 and dp 1 mixed (all eight with --runslow)
    ranks = range(world) if os.environ.get("RUN_SLOW") else (0, 3, 5, 6)
    for rank in ranks:
        tr = _rank(work, layout, rank, f"--load {root}")
        c, cfg = tr.coords, tr.pcfg
        f = torch_format.load(os.path.join(root, "release", rank_dir_name(c.tp, c.pp, cfg.pp), "model_optim_rng.pt"))
        owner = param_owner(tr.plan)
        params = {p.name: p for p in tr.model.network.get_parameters()}
        n_own = 0
        for n, p in params.items():
            if n not in owner:
                continue
            if owner[n][0] != c.pp:
                assert p.has_init, f"{n} (stage {owner[n][0]}) allocated on rank {rank} (stage {c.pp})"
                continue
            n_own += 1
            _, _, local = local_key(tr.plan, n, owner)
            assert not p.has_init and p.sliced, n
            np.testing.assert_array_equal(p.asnumpy(), np.asarray(f["model"][local]), err_msg=f"rank {rank} {n}")
            # and it is the plan's contiguous slice of the whole parameter (GLU in plan order)
            full = mmconv.get(n, mmconv["text_decoder.embedding.word_embeddings.weight"])
            split = tr.plan.param_strategies()[n][1] if n in tr.plan.param_strategies() else (1,) * full.ndim
            np.testing.assert_array_equal(p.asnumpy(), slice_for_rank(to_plan_layout(n, full, cfg.tp), split, c.tp))
        assert n_own == len(f["model"]) == sum(len(x) for x in rank_param_shapes(tr.plan, c.pp).values())
        # host bytes held by parameters and moments: exactly this rank's slices (fp32: 4 B x 3)
        n_el = sum(int(np.prod(s)) for x in rank_param_shapes(tr.plan, c.pp).values() for s in x.values())
        assert allocated_bytes(params.values()) == 4 * n_el
        assert allocated_bytes(list(tr.optimizer.exp_avg) + list(tr.optimizer.exp_avg_sq)) == 8 * n_el
        seen.add((c.tp, c.pp))
        if rank == 0:
            assert tr.fill_report and set(tr.fill_report.values()) == {"file"}
    assert seen == {(t, p) for t in range(2) for p in range(2)}


@pytest.mark.slow
def test_other_layout_and_fresh_init_give_the_slices(work, layout, mmconv):
    # mm-convert's tp 1 pp 1 release: the merged reader, cut to the slice -> the same values
    a = _rank(work, layout, 5, f"--load {work}/lazy_tp1pp1")
    b = _rank(work, layout, 5, f"--load {work}/lazy_tp2pp2")
    pa = {p.name: p for p in a.model.network.get_parameters() if not p.has_init}
    pb = {p.name: p for p in b.model.network.get_parameters() if not p.has_init}
    assert sorted(pa) == sorted(pb) and pa
    for n in pa:
        np.testing.assert_array_equal(pa[n].asnumpy(), pb[n].asnumpy(), err_msg=n)
    # fresh init: slices only; tp-split Normal weights differ per tp rank, dp copies (ranks 4, 6) agree
    r4, r5, r6 = (_rank(work, layout, r) for r in (4, 5, 6))
    assert (r4.coords.tp, r5.coords.tp, r6.coords.tp) == (0, 1, 0) and r4.coords.dp != r6.coords.dp
    assert set(r4.fill_report.values()) == {"random"}
    q = "text_decoder.decoder.layers.2.self_attention.linear_qkv.weight"
    p4, p5, p6 = ({p.name: p for p in r.model.network.get_parameters()}[q] for r in (r4, r5, r6))
    assert p4.shape == p5.shape and not np.array_equal(p4.asnumpy(), p5.asnumpy())
    np.testing.assert_array_equal(p4.asnumpy(), p6.asnumpy())
    std = r4.startup.model.text.init_method_std              # the layer's Normal(init_method_std)
    assert abs(float(p4.asnumpy().std()) - std) < 0.1 * std


@pytest.mark.slow
def test_own_save_is_the_rank_file_and_resume_fills_moments(work, layout, mmconv):
    """A lazy rank saves its own file (its slices, no merge): equal to mm-convert's file; a resume of
    that checkpoint (all four writers saved) restores slices and moments."""
    root = str(work / "lazy_tp2pp2")
    save = str(work / "lazy_save")
    world = FLAGS[1]
    cfg = _rank(work, layout, 0).pcfg
    writers = [r for r in range(world) if rank_coords(r, cfg).dp == 0]
    held = {}
    for r in writers:
        tr = _rank(work, layout, r, f"--load {root} --save {save}")
        rng = np.random.default_rng(r)
        for m in list(tr.optimizer.exp_avg) + list(tr.optimizer.exp_avg_sq):
            if not m.has_init:
                m.set_data(tr.ms.Tensor(rng.standard_normal(m.shape).astype(np.float32)))
        tr.iteration, tr.optimizer.step = 2, 2
        tr.write_rank_checkpoint()
        held[r] = {m.name: m.asnumpy() for m in list(tr.optimizer.exp_avg) + list(tr.optimizer.exp_avg_sq)
                   if not m.has_init}
    commit(save, 2, tr.plan)
    from auto_convert import torch_format
    from mindspeed_ms.checkpoint.layout import rank_dir_name
    for r in writers:
        c = rank_coords(r, tr.pcfg)
        mine = rank_file(save, 2, r, tr.pcfg)
        ref = torch_format.load(os.path.join(root, "release", rank_dir_name(c.tp, c.pp, 2), "model_optim_rng.pt"))
        assert sorted(mine["model"]) == sorted(ref["model"])
        for k in ref["model"]:
            np.testing.assert_array_equal(mine["model"][k], ref["model"][k], err_msg=k)
        fresh = _rank(work, layout, r, f"--load {save}")
        fresh.load()
        assert fresh.iteration == 2 and fresh.optimizer.step == 2
        got = {m.name: m.asnumpy() for m in list(fresh.optimizer.exp_avg) + list(fresh.optimizer.exp_avg_sq)
               if not m.has_init}
        assert sorted(got) == sorted(held[r])
        for k in got:
            np.testing.assert_array_equal(got[k], held[r][k], err_msg=k)
