"""The Ascend sharded training path of pretrain_vlm.py, built on CPU in dry mode (everything up to
compilation, which semi-auto parallel cannot do on CPU): for tp2 pp2 (bf16 flash), tp1 pp4 vpp2,
cp2 and sp (+ distributed optimizer) the plan lands on the real tiny model, the AutoParallel
settings and micro-batch wrapper match the layout, the optimizer covers the right parameters, the
collator gives every rank the same fixed shapes with global vision offsets, and the checkpoint of
each rank is what the plan's slices and mm-convert's split both say; mm-convert rank files load
stage by stage. CPU still stops TP/PP/CP > 1 before compute."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EX = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")

from mindspeed_ms.checkpoint.mm_io import read_mm_checkpoint, split_for_rank, write_mm_checkpoint  # noqa: E402
from mindspeed_ms.parallel.rank_checkpoint import checkpoint_layout, commit, host_array  # noqa: E402
from mindspeed_ms.parallel.rank_params import from_plan_layout, param_owner, slice_for_rank  # noqa: E402
from mindspeed_ms.parallel.train_setup import (fixed_vision_shapes, rank_coords, stack_micro_batches,  # noqa: E402
                                               uses_sharded_path)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny HF tokenizer/checkpoint dir and a small demo dataset (data.json), and a model.json with 4
    ViT and 4 LLM layers (enough for pp 4 x vpp 2)."""
    w = tmp_path_factory.mktemp("sharded")
    env = dict(os.environ, PYTHONPATH=ROOT)
    for cmd in ([sys.executable, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", f"{w}/hf"],
                [sys.executable, "-m", "mindspeed_ms.tools.make_demo_dataset", f"{w}/data", "--train", "8",
                 "--val", "7", "--no-llava"]):
        subprocess.run(cmd, check=True, env=env, cwd=str(w), capture_output=True, timeout=300)
    text = open(os.path.join(EX, "data_tiny.json")).read()
    text = text.replace("./ckpt/hf_path/Qwen2-VL-tiny", f"{w}/hf").replace("./data/tiny_demo", f"{w}/data")
    (w / "data.json").write_text(text)
    return w


def model_json(work, name, vit, llm, recompute=False):
    d = copy.deepcopy(json.load(open(os.path.join(EX, "model_tiny.json"))))
    d["image_encoder"]["vision_encoder"]["num_layers"] = 4
    d["text_decoder"]["num_layers"] = 4
    d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = vit
    d["text_decoder"]["pipeline_num_layers"] = llm
    if recompute:
        d["text_decoder"].update(recompute_granularity="full", recompute_method="block", recompute_num_layers=1)
    path = work / f"model_{name}.json"
    path.write_text(json.dumps(d))
    return str(path)


# name: (flags, world, vit layers, llm layers, recompute)
LAYOUTS = {
    "tp2_pp2_flash": ("--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --global-batch-size 4 "
                      "--bf16 --use-flash-attn", 8, [4, 0], [1, 3], True),
    "tp1_pp4_vpp2": ("--pipeline-model-parallel-size 4 --virtual-pipeline-model-parallel-size 2 "
                     "--global-batch-size 4", 4, [[1, 1, 1, 1], [0, 0, 0, 0]], [[0, 0, 0, 0], [1, 1, 1, 1]], False),
    "cp2": ("--context-parallel-size 2 --context-parallel-algo ulysses_cp_algo --global-batch-size 4", 4,
            [4], [4], False),
    "sp_distopt": ("--tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer "
                   "--global-batch-size 2", 4, [4], [4], False),
}


def argv(work, name, extra=""):
    flags, world, vit, llm, rc = LAYOUTS[name]
    mj = model_json(work, name, vit, llm, rc)
    return (f"--mm-data {work}/data.json --mm-model {mj} --micro-batch-size 1 --seq-length 256 --lr 1e-4 "
            f"--train-iters 2 --seed 3 {flags} {extra}").split(), world


def save_every_writer(tr, iteration):
    """Write every writer rank's file of `iteration` as the sharded save does, then commit; the writer ranks."""
    cfg = tr.pcfg
    writers = [r for r in range(cfg.world_size) if rank_coords(r, cfg).dp == 0 and rank_coords(r, cfg).cp == 0]
    own = tr.coords
    for r in writers:
        tr.coords = rank_coords(r, cfg)
        tr.write_rank_checkpoint()
    tr.coords = own
    commit(tr.args.save, iteration, tr.plan)
    return writers


def rank_file(root, iteration, rank, cfg):
    from auto_convert import torch_format
    from mindspeed_ms.checkpoint.layout import rank_dir_name
    c = rank_coords(rank, cfg)
    return torch_format.load(os.path.join(root, f"iter_{iteration:07d}", rank_dir_name(c.tp, c.pp, cfg.pp),
                                          "model_optim_rng.pt"))


def load_every_stage(fresh, world):
    """`load()` on one rank of each pipeline stage of a fresh dry trainer."""
    for st in range(fresh.pcfg.pp):
        fresh.coords = rank_coords(st * (world // fresh.pcfg.pp), fresh.pcfg)
        fresh.load()


@pytest.fixture(scope="module")
def built(work):
    """One dry trainer per layout, for its last rank (the logging rank, last pipeline stage)."""
    from mindspeed_ms.training.sharded_trainer import dry_run
    out = {}
    for name in LAYOUTS:
        a, world = argv(work, name, f"--save {work}/save_{name}")
        out[name] = dry_run(a, world - 1, world)
    return out


def test_rank_coordinates_follow_megatron_order():
    from mindspeed_ms.parallel.config import ParallelConfig
    cfg = ParallelConfig(world_size=16, tp=2, cp=2, pp=2)          # dp 2
    got = [(c.pp, c.dp, c.cp, c.tp) for c in (rank_coords(r, cfg) for r in range(16))]
    want = [(p, d, c, t) for p in range(2) for d in range(2) for c in range(2) for t in range(2)]
    assert got == want


def test_cpu_stops_sharded_layouts_before_compute(tmp_path):
    from mindspeed_ms.arguments import ArgumentError, parse_args, validate_args
    from mindspeed_ms.parallel.config import ParallelConfig
    mj = os.path.join(EX, "model_tiny.json")
    for flags, world in (("--tensor-model-parallel-size 2", 2), ("--context-parallel-size 2", 2)):
        args = parse_args(f"--mm-model {mj} --seq-length 64 --lr 1e-4 --train-iters 1 {flags}".split())
        with pytest.raises(ArgumentError, match="semi-auto parallel, which only runs on Ascend"):
            validate_args(args, world, "CPU", require_data=False)
    assert not uses_sharded_path(ParallelConfig(world_size=4, tp=2), "CPU")
    assert uses_sharded_path(ParallelConfig(world_size=4, tp=2), "Ascend")
    assert not uses_sharded_path(ParallelConfig(world_size=4), "Ascend")           # plain DP
    assert uses_sharded_path(ParallelConfig(world_size=4, use_distributed_optimizer=True), "Ascend")


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_dry_run_builds_the_layout(built, name):
    from mindspore.parallel.nn import GradAccumulation, Pipeline
    tr = built[name]
    cfg, plan, model = tr.pcfg, tr.plan, tr.model.network
    dp, tp, cp, pp = cfg.dp, cfg.tp, cfg.cp, cfg.pp
    nmb = tr.gbs // (tr.args.micro_batch_size * dp)
    s = tr.settings
    # AutoParallel: what the real MindSpore object recorded
    ap = tr.train_net
    assert ap._parallel_mode == "sharding_propagation"
    assert ap._pipeline_stages == pp and ap._pipeline_interleave == (cfg.vpp > 1)
    assert ap._enable_parallel_optimizer == cfg.use_distributed_optimizer
    assert ap._dataset_strategy_config == tuple((dp,) + (1,) * (n - 1) for n in
                                                [2, 2, 3, 2, 2, 1, 2, 2, 2, 2] + ([1] if plan.flash_attention else []))
    # micro-batches: Pipeline with pp > 1, GradAccumulation for several micro-batches at pp 1
    net = tr.step_cell.net
    if pp > 1:
        assert isinstance(net, Pipeline) and net.micro_size == nmb and s.micro_wrapper == "Pipeline"
    elif nmb > 1:
        assert isinstance(net, GradAccumulation) and net.micro_size == nmb
    else:
        assert net is tr.loss_cell
    # the plan on the real Cells
    cells = dict(model.cells_and_names())
    qkv = cells["text_decoder.decoder.layers.3.self_attention.linear_qkv"]
    assert qkv.matmul.in_strategy == ((dp * cp, 1), (tp, 1))
    for c in plan.cells:
        if pp > 1:
            assert cells[c.cell].pipeline_stage == c.stage, c.cell
        if cfg.vpp > 1:
            assert cells[c.cell].pipeline_segment == c.chunk, c.cell
        # recompute() marks a Cell and everything inside it
        inside = any(r.recompute and (c.cell == r.cell or c.cell.startswith(r.cell + ".")) for r in plan.cells)
        assert bool(getattr(cells[c.cell], "_has_config_recompute", False)) == inside, c.cell
    if name == "tp2_pp2_flash":
        assert plan.flash_attention and [c.cell for c in plan.cells if c.recompute] == [
            "text_decoder.decoder.layers.0", "text_decoder.decoder.layers.1"]
        vit_attn = cells["image_encoder.encoder.blocks.layers.0.self_attention.core_attention"]
        assert vit_attn.backend == "flash" and vit_attn.flash_attention_tnd.in_strategy is not None
        assert model.loss_fn.vocab_parallel and all(l.mlp.glu_chunks == 2 for l in model.text_decoder.decoder.layers)
    # optimizer: every trainable parameter, the tied output copy with pp > 1, Megatron's decay groups
    names = [p.name for p in tr.optimizer.params]
    assert names == [p.name for p in tr.trainable] and len(names) == len(set(names))
    copy_made = pp > 1 and tr.startup.model.text.tied
    assert ("text_decoder.output_layer.weight" in names) == copy_made
    assert (len(tr.tied) == 1) == copy_made
    if copy_made:
        i, j = tr.tied[0]
        assert (names[i], names[j]) == ("text_decoder.embedding.word_embeddings.weight",
                                        "text_decoder.output_layer.weight")
    shapes = {p.name: p.shape for p in tr.optimizer.params}
    assert sorted(tr.param_groups["no_decay"]) == sorted(n for n in names if n.endswith(".bias") or len(shapes[n]) == 1)
    assert sorted(tr.param_groups["decay"] + tr.param_groups["no_decay"]) == sorted(names)


@pytest.mark.parametrize("name", ["tp2_pp2_flash", "cp2", "sp_distopt"])
def test_collator_gives_every_dp_rank_fixed_shapes_and_global_offsets(work, built, name):
    """Each dp rank's feed (built as pretrain_vlm.py builds it) has the same shapes; stacked for the
    step, micro-batch i is slice i along axis 0 of every input; the vision keys are offset by
    dp_rank x patches, so the concatenation over dp ranks is one consistent ViT sequence."""
    from mindspeed_ms.training.sharded_trainer import build_sharded_feed
    tr = built[name]
    cfg = tr.pcfg
    feeds = []
    for d in range(cfg.dp):
        rank = d * cfg.cp * cfg.tp           # (pp 0, dp d, cp 0, tp 0)
        assert rank_coords(rank, cfg).dp == d
        feeds.append(build_sharded_feed(tr.args, tr.startup, rank))
    steps = [f.next_step() for f in feeds]
    n = steps[0][0]["pixel_values"].shape[0]
    assert n % 4 == 0
    ga = tr.ga
    for d, mbs in enumerate(steps):
        assert len(mbs) == ga
        for mb in mbs:
            assert mb["input_ids"].shape == (tr.args.micro_batch_size, 256) and mb["pixel_values"].shape[0] == n
            seg = mb["vision_segment_ids"]
            assert seg.min() >= d * n and seg.max() < (d + 1) * n
            take = mb["vision_token_mask"] > 0
            assert np.all(mb["vision_gather_index"][take] >= d * n // 4)
            assert np.all(mb["vision_gather_index"][take] < (d + 1) * n // 4)
            if tr.plan.flash_attention:
                cu = mb["vision_cu_seqlens"]
                assert cu[-1] == (d + 1) * n and np.all(np.diff(cu) > 0) and cu[0] > d * n
        stacked = stack_micro_batches(mbs, tr.keys)
        for i, mb in enumerate(mbs):
            for k, x in zip(tr.keys, stacked):
                part = np.split(x, ga, axis=0)[i]
                want = np.transpose(mb[k], (1, 0, 2)) if k == "position_ids" else mb[k]
                np.testing.assert_array_equal(part, want)
    assert ("vision_cu_seqlens" in steps[0][0]) == tr.plan.flash_attention


def test_fixed_vision_shapes_fit_every_micro_batch():
    n, k = fixed_vision_shapes([16, 64, 40, 4], [1, 3, 2, 1], micro_batch_size=2)
    assert k == 3 + 2 + 1 and n % 4 == 0 and n >= 64 + 40 + k
    from mindspeed_ms.models.qwen2vl.inputs import vision_cu_seqlens, vision_segment_ids
    # the worst case (the two largest samples) still cuts its padding into the missing blocks
    seg = vision_segment_ids(np.array([[1, 8, 8], [1, 2, 4], [1, 2, 4], [1, 2, 8]]), None, n)
    assert len(vision_cu_seqlens(seg, k, 104)) == k


@pytest.mark.parametrize("name", ["tp2_pp2_flash", pytest.param("tp1_pp4_vpp2", marks=pytest.mark.slow),
                                  pytest.param("sp_distopt", marks=pytest.mark.slow)])
def test_rank_checkpoints_are_the_plan_slices_and_mm_convert_split(work, built, name):
    """Write every writer rank's file as the sharded save does, then: (1) each file holds exactly the
    slice the plan gives that rank (its in-memory layout, GLU order included) and equals
    mm_io.split_for_rank of the model; (2) read back merged it is the model; (3) a fresh trainer
    loads it stage by stage (parameters and AdamW moments)."""
    tr = built[name]
    cfg, plan = tr.pcfg, tr.plan
    rng = np.random.default_rng(0)
    for m in list(tr.optimizer.exp_avg) + list(tr.optimizer.exp_avg_sq):
        m.set_data(tr.ms.Tensor(rng.standard_normal(m.shape).astype(np.float32)))
    tr.iteration, tr.optimizer.step = 3, 3
    root = tr.args.save
    writers = save_every_writer(tr, 3)
    assert len(writers) == cfg.tp * cfg.pp
    layout = checkpoint_layout(plan)
    held = {n: host_array(p.asnumpy()) for n, p in tr.saved_params.items()}   # plan (in-memory) layout
    mm = {n: from_plan_layout(n, a, cfg.tp) for n, a in held.items()}
    strategies, owner = plan.param_strategies(), param_owner(plan)
    for r in writers:
        c = rank_coords(r, cfg)
        f = rank_file(root, 3, r, cfg)
        want = split_for_rank(mm, c.tp, c.pp, layout)
        keys = ["model"] if cfg.vpp == 1 else [f"model{v}" for v in range(cfg.vpp)]
        assert sorted(k for k in f if k.startswith("model")) == keys
        for key in keys:
            assert sorted(f[key]) == sorted(want[key])
            for local, arr in f[key].items():
                np.testing.assert_array_equal(arr, want[key][local])
        # what the rank holds under the plan (contiguous slice of its in-memory parameter)
        stage_params = [n for n in held if owner[n][0] == c.pp]
        flat = {}
        for key in keys:
            flat.update(f[key])
        assert len(flat) == len(stage_params)
        for n in stage_params:
            split = strategies[n][1] if n in strategies else (1,) * held[n].ndim
            mine = slice_for_rank(held[n], split, c.tp)
            layout_local = [loc for loc in flat if flat[loc].shape == mine.shape and np.array_equal(flat[loc], mine)]
            assert layout_local, f"{n}: rank {r}'s plan slice is in no tensor of its file"
        assert f["iteration"] == 3 and f["optimizer"]["step"] == 3
    merged, reader = read_mm_checkpoint(root)
    assert (reader.layout.tp, reader.layout.pp, reader.layout.vpp) == (cfg.tp, cfg.pp, cfg.vpp)
    assert sorted(merged) == sorted(mm)
    for n in mm:
        np.testing.assert_array_equal(merged[n], mm[n])

    # resume stage by stage into a fresh trainer of the same layout (random init differs: seed)
    from mindspeed_ms.training.sharded_trainer import dry_run
    a, world = argv(work, name, f"--load {root} --seed 11")
    fresh = dry_run(a, world - 1, world)
    for p in fresh.saved_params.values():
        p.set_data(tr.ms.Tensor(np.zeros(p.shape, np.float32)).astype(p.dtype))
    load_every_stage(fresh, world)
    assert fresh.iteration == 3 and fresh.optimizer.step == 3
    for n, p in fresh.saved_params.items():
        np.testing.assert_array_equal(host_array(p.asnumpy()), held[n], err_msg=n)
    for a_, b_ in zip(list(fresh.optimizer.exp_avg) + list(fresh.optimizer.exp_avg_sq),
                      list(tr.optimizer.exp_avg) + list(tr.optimizer.exp_avg_sq)):
        np.testing.assert_array_equal(a_.asnumpy(), b_.asnumpy(), err_msg=a_.name)


def test_mm_convert_rank_files_load_stage_by_stage(work, built):
    """mm-convert's writer (write_mm_checkpoint, as hf_to_mm uses it) for tp 2 x pp 2, then each stage
    of the sharded run reads only its own files: the parameters equal the source, GLU in plan order."""
    from mindspeed_ms.parallel.rank_params import to_plan_layout
    from mindspeed_ms.training.sharded_trainer import dry_run
    name = "tp2_pp2_flash"
    tr = built[name]
    cfg = tr.pcfg
    rng = np.random.default_rng(1)
    src = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in tr.saved_params.items()
           if n != "text_decoder.output_layer.weight"}         # tied: mm-convert writes the copy itself
    write_mm_checkpoint(str(work / "mmconv"), "release", src, checkpoint_layout(tr.plan))
    a, world = argv(work, name, f"--load {work}/mmconv")
    fresh = dry_run(a, world - 1, world)
    load_every_stage(fresh, world)
    for n, p in fresh.saved_params.items():
        want = src["text_decoder.embedding.word_embeddings.weight"] if n == "text_decoder.output_layer.weight" else src[n]
        held = host_array(p.asnumpy())   # bf16 run: the loaded values rounded to bf16
        np.testing.assert_array_equal(held.astype(np.float32),
                                      to_plan_layout(n, want, cfg.tp).astype(held.dtype).astype(np.float32), err_msg=n)
    assert fresh.iteration == 0


def test_sharded_loss_cell_passes_vision_cu_seqlens_through_train_loss():
    """The flash ViT needs vision_cu_seqlens; the sharded loss cell (position_ids batch-first) passes
    them through the chunked train_loss: with a CPU stand-in of FlashAttentionScore the loss equals
    the matmul backend's (bf16 tolerance), and without them the model refuses."""
    import mindspore as ms
    sys.path.insert(0, HERE)
    from test_flash_varlen import FlashStandIn
    from mindspeed_ms.config.model_config import model_config_from_dict
    from mindspeed_ms.models.qwen2vl.inputs import vision_cu_seqlens
    from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration
    from mindspeed_ms.training.sharded_step import ShardedLossCell
    from mindspeed_ms.training.train_step import LossCell, TRAIN_KEYS
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        cfg = model_config_from_dict(json.load(open(os.path.join(EX, "model_tiny.json"))))
        ref = Qwen2VLForConditionalGeneration(cfg)
        flash = Qwen2VLForConditionalGeneration(cfg, attention_backend="flash")
        flash.load_mm_state_dict(ref.mm_state_dict())
        for _, cell in flash.cells_and_names():
            for attr in ("flash_attention_tnd", "flash_attention"):
                if hasattr(cell, attr):
                    setattr(cell, attr, FlashStandIn(getattr(cell, attr)))
        rng = np.random.default_rng(0)
        ids = np.concatenate([rng.integers(0, 900, 3), [cfg.vision_start_token_id], [cfg.image_token_id] * 6,
                              rng.integers(0, 900, 14)])[None]            # B*S divisible by 4 (chunked loss)
        labels = np.where(np.arange(ids.shape[1]) > 9, ids, -100)
        batch, _ = ref.prepare_batch(ids, pixel_values=rng.standard_normal((24, cfg.vision.patch_dim)).astype(np.float32),
                                     image_grid_thw=np.array([[1, 4, 6]]), labels=labels)
        batch["loss_weights"] = (labels != -100).astype(np.float32) / (labels != -100).sum()
        want = float(LossCell(ref)(*[ms.Tensor(batch[k]) for k in TRAIN_KEYS]).asnumpy())
        batch["vision_cu_seqlens"] = vision_cu_seqlens(batch["vision_segment_ids"])
        keys = TRAIN_KEYS + ("vision_cu_seqlens",)
        inputs = stack_micro_batches([batch], keys)
        got = float(ShardedLossCell(flash)(*[ms.Tensor(x) for x in inputs]).asnumpy())
        assert abs(got - want) < 2e-2 * abs(want)
        with pytest.raises(ValueError, match="needs vision_cu_seqlens"):
            ShardedLossCell(flash)(*[ms.Tensor(x) for x in inputs[:-1]])
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


LORA = ("--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --global-batch-size 4 "
        "--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 4 --lora-alpha 8 "
        "--lora-dropout 0.1")


def test_lora_on_the_sharded_path(work, built, monkeypatch):
    """LoRA (--lora-target-modules) on tp 2 x pp 2: the plan shards every adapter as its base weight's
    tensor-parallel split says (tp_split, the checkpoint rule) and moves the base primitives under
    base_layer; the static checker accepts it; the base model loads in the plan's GLU order; only the
    adapters are optimised; each writer rank's file holds exactly mm-convert's split of the adapters,
    and a fresh run loads them stage by stage."""
    from mindspeed_ms.checkpoint.tp_split import COL, GLU, ROW, tp_kind
    from mindspeed_ms.parallel.checker import check_plan
    from mindspeed_ms.parallel.rank_params import to_plan_layout
    from mindspeed_ms.peft.lora_merge import is_lora_name
    from mindspeed_ms.training.sharded_trainer import dry_run

    base_tr = built["tp2_pp2_flash"]
    rng = np.random.default_rng(5)
    src = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in base_tr.saved_params.items()
           if n != "text_decoder.output_layer.weight"}
    write_mm_checkpoint(str(work / "lora_base"), "release", src, checkpoint_layout(base_tr.plan))
    monkeypatch.setitem(LAYOUTS, "tp2_pp2_lora", (LORA + f" --load-base-model {work}/lora_base", 8, [4, 0], [1, 3],
                                                  False))
    a, world = argv(work, "tp2_pp2_lora", f"--save {work}/save_lora")
    tr = dry_run(a, world - 1, world)
    cfg, plan = tr.pcfg, tr.plan
    dp, tp = cfg.dp, cfg.tp
    assert check_plan(plan) == []
    # every Linear of the LLM, the ViT and the projector carries an adapter, each with 4 strategies + dropout
    assert len(plan.lora_modules) == 4 * 4 + 4 * 4 + 2
    cells = dict(tr.model.network.cells_and_names())
    strategies = plan.param_strategies()
    for module in plan.lora_modules:
        cell = cells[module]
        assert type(cell).__name__ == "LoRALinear"
        kind = tp_kind(module + ".weight")
        a_split = strategies[module + ".lora_A.default.weight"][1]
        b_split = strategies[module + ".lora_B.default.weight"][1]
        if kind in (ROW, GLU):      # column-parallel: A whole, B's rows split, delta split over features
            assert (a_split, b_split) == ((1, 1), (tp, 1)), module
            assert cell.base_layer.matmul.in_strategy[1] == (tp, 1)
            assert cell.add_delta.in_strategy == ((dp, tp), (dp, tp))
        else:                       # row-parallel: A's columns split, B whole
            assert kind == COL and (a_split, b_split) == ((1, tp), (1, 1)), module
            assert cell.base_layer.matmul.in_strategy[1] == (1, tp)
            assert cell.matmul_a.in_strategy == ((dp, tp), (1, tp))
        assert cell.matmul_b.in_strategy[1] == b_split and cell.dropout.dropout.in_strategy is not None
    # only the adapters train; the base (loaded, frozen) is in the plan's GLU order
    names = [p.name for p in tr.optimizer.params]
    assert names and all(is_lora_name(n) for n in names) and sorted(names) == sorted(tr.saved_params)
    params = {p.name: p for p in tr.model.network.get_parameters()}
    fc1 = "text_decoder.decoder.layers.2.mlp.linear_fc1.weight"
    np.testing.assert_array_equal(params[fc1].asnumpy(), to_plan_layout(fc1, src[fc1], tp))

    # adapters with values, written rank by rank: each file is mm-convert's split of the adapters
    for n, p in tr.saved_params.items():
        p.set_data(tr.ms.Tensor(rng.standard_normal(p.shape).astype(np.float32)))
    held = {n: p.asnumpy() for n, p in tr.saved_params.items()}
    mm = {n: from_plan_layout(n, x, tp) for n, x in held.items()}
    tr.iteration = 2
    root = tr.args.save
    layout = checkpoint_layout(plan)
    for r in save_every_writer(tr, 2):
        c = rank_coords(r, cfg)
        f = rank_file(root, 2, r, cfg)
        want = split_for_rank(mm, c.tp, c.pp, layout)["model"]
        assert sorted(f["model"]) == sorted(want) and all(is_lora_name(n) for n in f["model"])
        for local, arr in f["model"].items():
            np.testing.assert_array_equal(arr, want[local])
        assert f["args"]["lora_r"] == 4 and f["args"]["lora_target_modules"] == [
            "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    # a fresh run (other seed: other initial adapters) resumes the adapters stage by stage
    a, world = argv(work, "tp2_pp2_lora", f"--load {root} --seed 11")
    fresh = dry_run(a, world - 1, world)
    load_every_stage(fresh, world)
    assert fresh.iteration == 2
    for n, p in fresh.saved_params.items():
        np.testing.assert_array_equal(p.asnumpy(), held[n], err_msg=n)
