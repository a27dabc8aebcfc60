"""Shard plans for the shipped 2B/7B/72B script layouts and a grid of tiny layouts pass the static
checker; the checker finds broken plans; per-rank parameter shapes follow the mm-convert TP/PP
split; the plan command validates first and estimates memory."""
import copy
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mindspeed_ms.config.model_config import load_model_json, model_config_from_dict
from mindspeed_ms.parallel.checker import assert_plan_ok, check_plan
from mindspeed_ms.parallel.config import ParallelConfigError, validate_parallel_config
from mindspeed_ms.parallel.layout import normalize_pp_layers
from mindspeed_ms.parallel.memory import GiB, estimate_memory
from mindspeed_ms.parallel.plan import run
from mindspeed_ms.parallel.rank_params import (from_plan_layout, rank_param_shapes, slice_for_rank,
                                               to_plan_layout)
from mindspeed_ms.parallel.shard_plan import build_shard_plan, stage_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
EX = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")
SCRIPTS = {  # finetune_qwen2vl_*.sh: TP, PP, devices, GRAD_ACC_STEP
    "2b": (1, 1, 8, 24), "7b": (1, 4, 8, 96), "72b": (2, 8, 32, 16)}


def script_plan(size, backend="Ascend"):
    tp, pp, n, acc = SCRIPTS[size]
    cfg = load_model_json(os.path.join(EX, f"model_{size}.json"))
    dp = n // (tp * pp)
    pcfg = validate_parallel_config({"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                                     "micro_batch_size": 1, "global_batch_size": acc * dp, "seq_length": 1024,
                                     "use_distributed_optimizer": True}, cfg, n)
    return cfg, pcfg, build_shard_plan(cfg, pcfg, backend=backend, bf16=True)


@pytest.mark.parametrize("size", ["2b", "7b", "72b"])
def test_script_layouts_pass_the_checker(size):
    cfg, pcfg, plan = script_plan(size)
    assert check_plan(plan) == []
    # every parameter lives on exactly one stage
    from mindspeed_ms.config.param_shapes import param_count
    total = sum(int(np.prod(s)) for stage in range(pcfg.pp)
                for chunk in rank_param_shapes(plan, stage).values() for s in chunk.values())
    assert pcfg.tp > 1 or total == param_count(cfg)


@pytest.mark.parametrize("size", ["2b", "7b", "72b"])
def test_per_rank_shapes_equal_mm_convert_split(size):
    """Stage, local name and per-rank shape of every parameter agree with mindspeed_ms.checkpoint
    (the mm-convert TP/PP split) for the script layouts."""
    from mindspeed_ms.checkpoint.pp_split import ParallelLayout
    from mindspeed_ms.checkpoint.tp_split import tp_shape
    from mindspeed_ms.config.param_shapes import mm_param_shapes
    cfg, pcfg, plan = script_plan(size)
    ckpt = ParallelLayout.build(tp_size=pcfg.tp, llm_pp_layers=pcfg.layout.llm_chunks,
                                vit_pp_layers=pcfg.layout.vit_chunks)
    want = {}
    for name, shape in mm_param_shapes(cfg).items():
        c, local = ckpt.place(name)
        want[(c % pcfg.pp, c // pcfg.pp, local)] = tp_shape(name, shape, pcfg.tp)
    got = {(stage, chunk, n): shp for stage in range(pcfg.pp)
           for chunk, shapes in rank_param_shapes(plan, stage).items() for n, shp in shapes.items()}
    assert got == want


def test_tiny_rank_slices_equal_mm_convert_content():
    """Content, not just shapes: each tp rank's slice of the plan-layout parameter is exactly the
    tensor mm-convert writes for that rank."""
    from mindspeed_ms.checkpoint.tp_split import split_tp
    from mindspeed_ms.config.param_shapes import mm_param_shapes
    cfg = model_config_from_dict(tiny_dict())
    for tp in (2, 4):
        pcfg = validate_parallel_config({"tensor_model_parallel_size": tp, "seq_length": 8}, cfg, tp)
        strat = build_shard_plan(cfg, pcfg).param_strategies()
        rng = np.random.default_rng(tp)
        for name, shape in mm_param_shapes(cfg).items():
            full = rng.standard_normal(shape).astype(np.float32)
            split = strat[name][1] if name in strat else (1,) * len(shape)
            for r in range(tp):
                np.testing.assert_array_equal(slice_for_rank(to_plan_layout(name, full, tp), split, r),
                                              split_tp(name, full, tp, r), err_msg=f"{name} tp {tp} rank {r}")


def tiny_dict(vit_layers=2, llm_layers=2):
    with open(os.path.join(EX, "model_tiny.json")) as f:
        d = json.load(f)
    d = copy.deepcopy(d)
    d["image_encoder"]["vision_encoder"]["num_layers"] = vit_layers
    d["text_decoder"]["num_layers"] = llm_layers
    d["text_decoder"]["num_attention_heads"] = 8
    d["text_decoder"]["num_query_groups"] = 4
    d["text_decoder"]["kv_channels"] = 8
    d["text_decoder"]["mrope_section"] = [2, 1, 1]
    return d


GRID = [  # tp, pp, vpp, cp, sp, world, vit list, llm list
    (1, 1, 1, 1, False, 1, [2], [4]),
    (2, 1, 1, 1, False, 2, [2], [4]),
    (2, 1, 1, 1, True, 4, [2], [4]),
    (4, 1, 1, 1, True, 4, [2], [4]),
    (1, 2, 1, 1, False, 2, [2, 0], [1, 3]),
    (2, 2, 1, 1, True, 8, [2, 0], [2, 2]),
    (1, 1, 1, 2, False, 2, [2], [4]),
    (2, 1, 1, 2, True, 8, [2], [4]),
    (2, 2, 2, 2, True, 16, [2, 0, 0, 0], [1, 1, 1, 1]),
    (1, 4, 1, 1, False, 4, [2, 0, 0, 0], [1, 1, 1, 1]),
]


@pytest.mark.parametrize("tp,pp,vpp,cp,sp,world,vit,llm", GRID)
def test_tiny_layout_grid(tp, pp, vpp, cp, sp, world, vit, llm):
    d = tiny_dict(sum(vit), sum(llm))
    d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = vit
    d["text_decoder"]["pipeline_num_layers"] = llm
    cfg = model_config_from_dict(d)
    pcfg = validate_parallel_config({"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                                     "virtual_pipeline_model_parallel_size": vpp, "context_parallel_size": cp,
                                     "sequence_parallel": sp, "seq_length": 30, "micro_batch_size": 2,
                                     "global_batch_size": 2 * (world // (tp * pp * cp)) * pp * 2}, cfg, world)
    plan = build_shard_plan(cfg, pcfg)
    assert_plan_ok(plan)
    qkv = plan.entries_for("text_decoder.decoder.layers.0.self_attention.linear_qkv")[0]
    dp = pcfg.dp
    assert qkv.strategy == ((dp * cp, 1), (tp, 1))
    proj = plan.entries_for("text_decoder.decoder.layers.0.self_attention.linear_proj")[0]
    assert proj.strategy == ((dp * cp, tp), (1, tp))
    assert proj.out_strategy == (((dp * cp * tp, 1),) if sp and tp > 1 else None)
    qk = [e for e in plan.entries_for("text_decoder.decoder.layers.0.self_attention.core_attention")
          if e.prim == "bmm_qk"][0]
    assert qk.strategy == ((dp, tp * cp, 1, 1), (dp, tp * cp, 1, 1))   # Ulysses: kv heads over tp x cp
    # the padded length (30 is unaligned for cp 2 / sp) is what the strategies split
    assert qk.shapes[1][2] == pcfg.padded_seq_length(30) and qk.shapes[1][2] % pcfg.seq_split == 0
    stages, segments = stage_config(plan)
    assert set(stages.values()) == set(range(pp))
    assert (segments != {}) == (vpp > 1)


def test_checker_finds_broken_strategies():
    cfg, pcfg, plan = script_plan("72b")
    e = plan.entries_for("text_decoder.decoder.layers.3.self_attention.linear_proj")[0]
    e.strategy = ((pcfg.dp, 2), (1, 1))               # contraction split differently
    qkv = plan.entries_for("text_decoder.decoder.layers.3.self_attention.linear_qkv")[0]
    qkv.strategy = ((pcfg.dp, 1), (3, 1))             # 3 does not divide 5120 x 8192 / the stage's 4 devices
    problems = check_plan(plan)
    text = "\n".join(problems)
    assert "linear_proj.matmul: contracted dims (input 0 dim 1, input 1 dim 1) split 2 vs 1" in text
    assert "linear_qkv.matmul: input 1 dim 0 of size 10240 is not divisible by its split 3" in text
    assert "does not divide the 4 devices of a pipeline stage" in text
    with pytest.raises(ParallelConfigError, match="shard plan check failed"):
        assert_plan_ok(plan)


def test_glu_plan_layout_is_mm_convert_rank_order_and_invertible():
    rng = np.random.default_rng(0)
    gate, up = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    name = "text_decoder.decoder.layers.0.mlp.linear_fc1.weight"
    full = np.concatenate([gate, up])
    tp = 4
    plan_w = to_plan_layout(name, full, tp)
    for r in range(tp):
        # mm-convert: rank r holds concat(gate[r], up[r])
        want = np.concatenate([np.split(gate, tp)[r], np.split(up, tp)[r]])
        np.testing.assert_array_equal(slice_for_rank(plan_w, (tp, 1), r), want)
    np.testing.assert_array_equal(from_plan_layout(name, plan_w, tp), full)
    other = "image_encoder.encoder.blocks.layers.0.mlp.linear_fc1.weight"
    assert to_plan_layout(other, full, tp) is full


def test_nested_vpp_lists_as_in_hf_to_mm():
    chunks = normalize_pp_layers([[0, 0, 0, 1], [4, 4, 4, 4], [4, 3, 2, 2]], 4, 3, 28, "llm")
    assert chunks[2] == [4, 3, 2, 2]
    with pytest.raises(ParallelConfigError, match=r"has 3 virtual-pipeline chunks .* but --virtual-pipeline-model-"
                                                  r"parallel-size is 2"):
        normalize_pp_layers([[0, 0, 0, 1], [4, 4, 4, 4], [4, 3, 2, 2]], 4, 2, 28, "llm")


def test_recompute_marks_cells():
    cfg, pcfg, plan = script_plan("72b")     # model_72b.json: full, uniform, 1
    llm = [c for c in plan.cells if c.cell.startswith("text_decoder.decoder.layers.") and c.cell.count(".") == 3]
    assert len(llm) == 80 and all(c.recompute for c in llm)
    vit = [c for c in plan.cells if c.cell.startswith("image_encoder.encoder.blocks.layers.")]
    assert vit and not any(c.recompute for c in vit)


def test_memory_estimate_parts():
    cfg, pcfg, plan = script_plan("7b")
    mem = estimate_memory(plan)
    # stage 0: frozen ViT (weights only) + 1 LLM layer + embedding
    s0 = mem[0]
    assert s0.trainable < s0.params and s0.grad_bytes == 4 * s0.trainable
    assert s0.optimizer_bytes == 12 * s0.trainable // pcfg.dp
    assert [m.in_flight for m in mem] == [4, 3, 2, 1]   # 1F1B
    # recompute lowers activations
    full = estimate_memory(plan)[1].activation_bytes
    pcfg.text_recompute.granularity, pcfg.text_recompute.method, pcfg.text_recompute.num_layers = "full", "uniform", 1
    assert estimate_memory(plan)[1].activation_bytes < full / 3
    fp32 = estimate_memory(plan, dtype="fp32")[1]
    assert fp32.weight_bytes == 4 * fp32.params


def test_plan_command_prints_and_validates(tmp_path):
    out = io.StringIO()
    rc = run(["--mm-model", os.path.join(EX, "model_7b.json"), "--pipeline-model-parallel-size", "4",
              "--micro-batch-size", "1", "--seq-length", "1024", "--num-devices", "8",
              "--global-batch-size", "192", "--use-distributed-optimizer", "--device-memory-gb", "20"], out=out)
    text = out.getvalue()
    assert rc == 0, text
    assert "stage 0: patch_embed, vit 0-31 (32), projector, embedding, llm 0-0 (1)" in text
    assert "stage 3: llm 21-27 (7), final_layernorm + output_layer" in text
    assert "self_attention.linear_qkv.weight: (4608, 3584)" in text
    assert "static check of" in text and ": ok" in text
    assert "WARNING: stage 1 needs about" in text and "--device-memory-gb 20" in text
    bad = subprocess.run([sys.executable, "-m", "mindspeed_ms.parallel.plan", "--mm-model",
                          os.path.join(EX, "model_7b.json"), "--tensor-model-parallel-size", "8",
                          "--micro-batch-size", "1", "--seq-length", "1024", "--num-devices", "8"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert bad.returncode == 2
    assert "invalid parallel layout" in bad.stderr and "is not divisible by tp 8" in bad.stderr


@pytest.mark.parametrize("tp,pp,world", [(1, 4, 8), (4, 4, 16)])
def test_lora_plan_and_memory(tp, pp, world):
    """LoRA in the plan command: every Linear of the 7B model gets its adapters (strategies pass the
    checker), each device's trainable parameters are exactly its adapter slices (A [r, in] and
    B [out, r], split like the base weight), and grads/optimizer shrink to those."""
    from mindspeed_ms.checkpoint.tp_split import tp_shape
    from mindspeed_ms.parallel.rank_params import full_param_shapes, param_owner
    from mindspeed_ms.parallel.shard_plan import LoRASpec
    targets = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
    out = io.StringIO()
    argv = ["--mm-model", os.path.join(EX, "model_7b.json"), "--tensor-model-parallel-size", str(tp),
            "--pipeline-model-parallel-size", str(pp), "--micro-batch-size", "1", "--seq-length", "1024",
            "--num-devices", str(world)]
    assert run(argv + ["--lora-target-modules", *targets, "--lora-r", "16"], out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "LoRA r 16 on 242 linears (base frozen)" in text and ": ok" in text  # 28 x 4 + 32 x 4 + 2
    cfg = validate_parallel_config(_namespace(argv), load_model_json(os.path.join(EX, "model_7b.json")), world)
    plan = build_shard_plan(load_model_json(os.path.join(EX, "model_7b.json")), cfg, "Ascend", True,
                            lora=LoRASpec(targets, 16))
    assert check_plan(plan) == []
    full = estimate_memory(build_shard_plan(load_model_json(os.path.join(EX, "model_7b.json")), cfg, "Ascend", True))
    shapes, owner = full_param_shapes(plan), param_owner(plan)
    for n, shape in shapes.items():                 # A [r, in] and B [out, r] beside the base [out, in]
        if ".lora_" in n:
            base = shapes[n.split(".lora_")[0] + ".weight"]
            assert shape == ((16, base[1]) if ".lora_A." in n else (base[0], 16)), n
    for st, mem in enumerate(estimate_memory(plan)):
        want = sorted(tp_shape(n, s, tp) for n, s in shapes.items() if ".lora_" in n and owner[n][0] == st)
        got = sorted(tuple(s) for chunk in rank_param_shapes(plan, st).values() for n, s in chunk.items()
                     if ".lora_" in n)
        assert got and got == want      # each device's adapter slices are tp_split's (the checkpoint rule)
        assert mem.trainable == sum(int(np.prod(s)) for s in got) and mem.grad_bytes == 4 * mem.trainable
        assert mem.grad_bytes + mem.optimizer_bytes < (full[st].grad_bytes + full[st].optimizer_bytes) / 20
        assert mem.weight_bytes > full[st].weight_bytes   # the base stays, plus the adapters


def _namespace(argv):
    from mindspeed_ms.parallel.plan import build_parser
    ns = build_parser().parse_args(argv)
    dp = max(1, ns.num_devices // (ns.tensor_model_parallel_size * ns.pipeline_model_parallel_size))
    ns.global_batch_size = ns.micro_batch_size * dp * ns.pipeline_model_parallel_size
    return ns
