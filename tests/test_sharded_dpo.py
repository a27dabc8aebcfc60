"""Sharded DPO (rl/sharded_dpo.py), the 72B LoRA DPO layout scaled down to the tiny model: built in
dry mode up to compilation at tp 2 x pp 2 and tp 2 x pp 4 (LoRA, base = reference, every strategy
passing the static checker, each rank holding only its slices); the sharded step's DPO loss on the
logical global batch (every dp rank's interleaved pairs, fixed shapes, global vision offsets) equals
the data-parallel DPO loss of the same pairs (1e-5), with label smoothing and pref-ftx."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EX = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")
sys.path.insert(0, HERE)

from test_parallel_train_setup import model_json  # noqa: E402

LORA = "--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 4 --lora-alpha 8"
DPO = "--dpo-beta 0.1 --dpo-label-smoothing 0.1 --pref-ftx 0.5"
LAYOUTS = {"tp2_pp2": (8, [4, 0], [1, 3]), "tp2_pp4": (8, [4, 0, 0, 0], [1, 1, 1, 1])}


@pytest.fixture(scope="module")
def dwork(tmp_path_factory):
    """Tiny tokenizer, a synthetic preference set (8 pairs) and its data.json; a random base model
    written by mm-convert's writer at tp 2 x pp 2."""
    w = tmp_path_factory.mktemp("sdpo")
    env = dict(os.environ, PYTHONPATH=ROOT)
    for cmd in ([sys.executable, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", f"{w}/hf"],
                [sys.executable, "-m", "mindspeed_ms.rl.make_preference_dataset", f"{w}/data", "--train", "8",
                 "--val", "2"]):
        subprocess.run(cmd, check=True, env=env, cwd=str(w), capture_output=True, timeout=300)
    text = open(os.path.join(EX, "data_tiny_dpo.json")).read()
    text = text.replace("./ckpt/hf_path/Qwen2-VL-tiny", f"{w}/hf").replace("./data/tiny_dpo", f"{w}/data")
    (w / "data.json").write_text(text)
    from mindspeed_ms.checkpoint.mm_io import write_mm_checkpoint
    from mindspeed_ms.checkpoint.pp_split import ParallelLayout
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.config.param_shapes import mm_param_shapes
    cfg = load_model_json(model_json(w, "tp2_pp2", [4, 0], [1, 3]))
    rng = np.random.default_rng(3)
    src = {n: (rng.standard_normal(s) * 0.05).astype(np.float32) for n, s in mm_param_shapes(cfg).items()}
    write_mm_checkpoint(str(w / "base"), "release", src, ParallelLayout.build(2, [[1, 3]], [[4, 0]]))
    return w


def argv(w, name, extra="", lora=True):
    world, vit, llm = LAYOUTS[name]
    pp = len(llm)
    mj = model_json(w, name, vit, llm)
    return (f"--mm-data {w}/data.json --mm-model {mj} --micro-batch-size 1 --global-batch-size 4 --seq-length 256 "
            f"--lr 1e-4 --train-iters 2 --seed 3 --tensor-model-parallel-size 2 --pipeline-model-parallel-size {pp} "
            f"--load {w}/base {LORA if lora else ''} {DPO} {extra}").split(), world


@pytest.mark.parametrize("name", ["tp2_pp2", pytest.param("tp2_pp4", marks=pytest.mark.slow)])
def test_dry_run_builds_the_sharded_dpo_layout(dwork, name):
    from mindspore.parallel.nn import Pipeline
    from mindspeed_ms.parallel.checker import check_plan
    from mindspeed_ms.parallel.rank_params import param_owner
    from mindspeed_ms.peft.lora_merge import is_lora_name
    from mindspeed_ms.rl.sharded_dpo import DPO_KEYS, ShardedDPOLossCell, dry_run
    a, world = argv(dwork, name)
    tr = dry_run(a, world - 1, world)
    cfg, plan = tr.pcfg, tr.plan
    assert check_plan(plan) == [] and plan.lora_modules
    assert tr.keys == DPO_KEYS and tr.reference_model is None          # the base model is the reference
    assert isinstance(tr.loss_cell, ShardedDPOLossCell) and abs(tr.loss_cell.scale - 1 / cfg.num_micro_batches) < 1e-12
    net = tr.step_cell.net
    assert isinstance(net, Pipeline) and net.micro_size == cfg.num_micro_batches == 4 // cfg.dp
    ap = tr.train_net
    assert ap._pipeline_stages == cfg.pp
    assert ap._dataset_strategy_config == tuple((cfg.dp,) + (1,) * (n - 1) for n in [2, 2, 3, 2, 2, 1, 2, 2, 2, 1])
    assert tr.ref_net._pipeline_stages == cfg.pp and tr.policy_net is tr.ref_net
    # stage configs name the model's Cells as the wrapper sees them
    assert all(k.startswith("network.") for k in tr.settings.stage_config)
    # only adapters train; this rank (last stage) holds only its own slices of the base (the small
    # adapters are built whole, then cut to their slice on the own stage)
    assert tr.optimizer.params and all(is_lora_name(p.name) for p in tr.optimizer.params)
    owner = param_owner(plan)
    for p in tr.model.network.get_parameters():
        if p.name in owner and not is_lora_name(p.name):
            assert p.has_init == (owner[p.name][0] != tr.coords.pp), p.name
        elif p.name in owner and owner[p.name][0] == tr.coords.pp:
            assert p.sliced, p.name
    # the step's batch: interleaved pairs, 2 x mbs rows per micro-batch, fixed shapes
    mbs = tr.feed.next_step()
    batch = tr.step_batch(mbs)
    assert batch[0].shape == (2 * cfg.num_micro_batches, 256)
    with pytest.raises(Exception, match="dry mode"):
        tr.step_inputs(mbs)


@pytest.mark.slow
def test_sharded_dpo_loss_equals_data_parallel_loss(dwork):
    """Two dp ranks x 2 micro-batches x 1 pair: the sharded loss Cell over each logical micro-batch
    (the dp ranks' micro-batch i concatenated, as MindSpore's micro-batch slicing gives it), the
    reference from the same forward graph with the adapters off, summed over micro-batches, equals
    sum over ranks and micro-batches of the data-parallel DPO loss Cell x 1/(GA x DP)."""
    import mindspore as ms
    from mindspeed_ms.arguments import parse_args, validate_args
    from mindspeed_ms.parallel.train_setup import rank_coords, stack_micro_batches
    from mindspeed_ms.peft.lora_model import apply_lora
    from mindspeed_ms.rl.dpo_loss import DPOLoss
    from mindspeed_ms.rl.dpo_step import LOGP_KEYS, DPOLossCell, ReferenceLogProbs
    from mindspeed_ms.rl.dpo_trainer import build_dpo_feed
    from mindspeed_ms.rl.sharded_dpo import (BATCH_KEYS, ShardedDPOLossCell, ShardedLogProbs, build_sharded_dpo_feed,
                                             dpo_metrics)
    from mindspeed_ms.training.build import build_model
    a, world = argv(dwork, "tp2_pp2")
    args = parse_args(a, prog="posttrain_qwen2vl_dpo.py")
    st = validate_args(args, world, "Ascend")
    a_dp = [x for x in a]
    i = a_dp.index("--tensor-model-parallel-size")
    a_dp[i + 1] = "1"
    a_dp[a_dp.index("--pipeline-model-parallel-size") + 1] = "1"
    a_dp[a_dp.index("--mm-model") + 1] = model_json(dwork, "dp", [4], [4])
    args_dp = parse_args(a_dp, prog="posttrain_qwen2vl_dpo.py")
    st_dp = validate_args(args_dp, 2, "CPU")
    assert st_dp.parallel.dp == st.parallel.dp == 2
    ga, dp = args.grad_acc_steps, 2
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        model = build_model(st_dp.model, args_dp, "CPU")
        adapters = apply_lora(model, args.lora_target_modules, r=4, alpha=8, seed=1)
        rng = np.random.default_rng(0)
        for n, p in adapters.params.items():      # B != 0: the policy differs from the reference
            p.set_data(ms.Tensor((rng.standard_normal(p.shape) * 0.3).astype(np.float32)))
        net = model.network
        loss = DPOLoss(args.dpo_beta, args.dpo_label_smoothing, args.pref_ftx)

        # data parallel: each rank's own micro-batches ([chosen..., rejected...] rows)
        want, want_m = 0.0, []
        for d in range(dp):
            mbs = build_dpo_feed(args_dp, st_dp, d).next_step()
            assert len(mbs) == ga
            for mb in mbs:
                t = [ms.Tensor(mb[k]) for k in LOGP_KEYS]
                with adapters.disabled():
                    ref = ReferenceLogProbs(net)(*t)
                out = DPOLossCell(net, loss)(*t, ref, ms.Tensor(1.0 / (ga * dp), ms.float32))
                want += float(out[0].asnumpy())
                want_m.append([float(x.asnumpy()) for x in out[1:]])

        # sharded: logical micro-batch i = the dp ranks' micro-batch i (interleaved pairs) concatenated
        feeds = []
        for d in range(dp):
            rank = next(r for r in range(world) if rank_coords(r, st.parallel).dp == d)
            feeds.append(build_sharded_dpo_feed(args, st, rank).next_step())
        got, pol_all, ref_all = 0.0, [], []
        cell = ShardedDPOLossCell(net, loss, ga)
        for i in range(ga):
            parts = [stack_micro_batches([feeds[d][i]], BATCH_KEYS) for d in range(dp)]
            logical = [ms.Tensor(np.concatenate([p[k] for p in parts], axis=0)) for k in range(len(BATCH_KEYS))]
            with adapters.disabled():
                ref = ShardedLogProbs(net)(*logical)[0]
            pol = ShardedLogProbs(net)(*logical)[0]
            pol_all.append(pol.asnumpy())
            ref_all.append(ref.asnumpy())
            got += float(cell(*logical[:9], ref).asnumpy())
        assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)
        m = dpo_metrics(np.concatenate(pol_all), np.concatenate(ref_all), args.dpo_beta)
        dp_m = np.mean(np.asarray(want_m), axis=0)
        np.testing.assert_allclose([m[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")],
                                   dp_m[:3], rtol=1e-4, atol=1e-6)
        assert abs(m["rewards/accuracies"] - dp_m[3]) < 1e-6
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def _script_argv(script, workdir):
    """The program arguments the shipped script hands msrun (msrun replaced by a recorder)."""
    import stat
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    record = workdir / "argv.txt"
    p = bindir / "msrun"
    p.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {record}\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["bash", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    argv = record.read_text().splitlines()
    return argv[argv.index("posttrain_qwen2vl_dpo.py") + 1:]


def test_72b_lora_dpo_script_validates_and_plans_under_64_gb(tmp_path):
    """finetune_qwen2vl_72b_dpo.sh with the README's layout (model_72b.json's pipeline_num_layers
    [32,0,0,0] / [17,21,22,20]): validate_args accepts it on Ascend (8 NPUs, TP 2, PP 4, the sharded
    path), and `plan --dpo` with its LoRA flags fits a 64 GB NPU."""
    import io
    from mindspeed_ms.arguments import parse_args, validate_args
    from mindspeed_ms.parallel.plan import run
    from mindspeed_ms.parallel.train_setup import uses_sharded_path
    from mindspeed_ms.rl.dpo_trainer import check_dpo_args, resolve_reference
    d = json.load(open(os.path.join(EX, "model_72b.json")))
    d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = [32, 0, 0, 0]
    d["text_decoder"]["pipeline_num_layers"] = [17, 21, 22, 20]
    mj = tmp_path / "model_72b.json"
    mj.write_text(json.dumps(d))
    argv = _script_argv(os.path.join(EX, "finetune_qwen2vl_72b_dpo.sh"), tmp_path)
    argv[argv.index("--mm-model") + 1] = str(mj)
    assert argv[argv.index("--load") + 1] == argv[argv.index("--ref-model") + 1]   # the base is the reference
    ck = tmp_path / "ckpt"                      # the script's LOAD_PATH, as mm-convert leaves it
    (ck / "release").mkdir(parents=True)
    (ck / "latest_checkpointed_iteration.txt").write_text("release")
    argv[argv.index("--load") + 1] = argv[argv.index("--ref-model") + 1] = str(ck)
    args = parse_args(argv, prog="posttrain_qwen2vl_dpo.py")
    check_dpo_args(args)
    st = validate_args(args, 8, "Ascend", require_data=False)
    assert resolve_reference(args) == str(ck)
    cfg = st.parallel
    assert (cfg.tp, cfg.pp, cfg.dp, cfg.num_micro_batches) == (2, 4, 1, 64) and uses_sharded_path(cfg, "Ascend")
    assert args.lora_target_modules == ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    out = io.StringIO()
    rc = run(["--mm-model", str(mj), "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "4",
              "--micro-batch-size", "1", "--global-batch-size", "64", "--seq-length", "1024", "--num-devices", "8",
              "--use-distributed-optimizer", "--dpo", "--lora-target-modules", *args.lora_target_modules], out)
    text = out.getvalue()
    assert rc == 0 and "reference = the base model" in text and "WARNING" not in text, text
    totals = [float(line.split()[6]) for line in text.splitlines() if line.strip()[:1].isdigit() and
              len(line.split()) == 8]
    assert len(totals) == 4 and max(totals) < 64
    # --llm-pp-layers / --vit-pp-layers override model.json, as mm-convert's options name them
    out2 = io.StringIO()
    run(["--mm-model", os.path.join(EX, "model_72b.json"), "--tensor-model-parallel-size", "2",
         "--pipeline-model-parallel-size", "4", "--micro-batch-size", "1", "--global-batch-size", "64",
         "--seq-length", "1024", "--num-devices", "8", "--use-distributed-optimizer", "--dpo",
         "--lora-target-modules", *args.lora_target_modules, "--llm-pp-layers", "17", "21", "22", "20",
         "--vit-pp-layers", "32", "0", "0", "0"], out2)
    assert out2.getvalue() == text


def test_dpo_memory_counts_pairs_and_the_reference_copy():
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.parallel.config import validate_parallel_config
    from mindspeed_ms.parallel.memory import estimate_memory
    from mindspeed_ms.parallel.shard_plan import build_shard_plan
    cfg = load_model_json(os.path.join(EX, "model_7b.json"))
    pcfg = validate_parallel_config({"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 4,
                                     "micro_batch_size": 1, "global_batch_size": 8, "seq_length": 1024}, cfg, 8)
    plan = build_shard_plan(cfg, pcfg, backend="Ascend", bf16=True)
    sft = estimate_memory(plan)
    dpo = estimate_memory(plan, dpo=True)
    copy = estimate_memory(plan, dpo=True, dpo_reference_copy=True)
    for a, b, c in zip(sft, dpo, copy):
        assert b.activation_bytes > 1.9 * a.activation_bytes * 0.5 and b.activation_bytes > a.activation_bytes
        assert b.weight_bytes == a.weight_bytes and c.weight_bytes == 2 * a.weight_bytes
        assert (b.grad_bytes, b.optimizer_bytes) == (a.grad_bytes, a.optimizer_bytes)


def test_full_parameter_dpo_builds_a_lazy_frozen_reference(dwork):
    """Without LoRA the reference is a second model under the same plan: each rank holds only its
    slices of --ref-model (equal to the policy's, both loaded from the same checkpoint), frozen, with
    its own forward graph; the policy has one for the metrics."""
    from mindspeed_ms.parallel.rank_params import param_owner
    from mindspeed_ms.rl.sharded_dpo import dry_run
    a, world = argv(dwork, "tp2_pp2", f"--ref-model {dwork}/base", lora=False)
    tr = dry_run(a, 0, world)
    assert tr.reference_model is not None and tr.policy_net is not tr.ref_net
    owner = param_owner(tr.ref_plan)
    pol = {p.name: p for p in tr.model.network.get_parameters()}
    n = 0
    for p in tr.reference_model.get_parameters():
        if p.name not in owner:
            continue
        assert not p.requires_grad
        if owner[p.name][0] != tr.coords.pp:
            assert p.has_init
            continue
        n += 1
        np.testing.assert_array_equal(p.asnumpy(), pol[p.name].asnumpy(), err_msg=p.name)
    assert n > 0 and tr.optimizer.params
