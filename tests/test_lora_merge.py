"""Merging LoRA into the base: per-TP-rank shards agree with the whole-tensor merge (the adapter
split follows the base split), merge_lora_checkpoint writes a release checkpoint in the base
layout that mm_to_hf converts, the LoRA checkpoint is >= 20x smaller than the full one, bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_synthetic import small_model_json  # noqa: E402

from mindspeed_ms.checkpoint import (ParallelLayout, load_hf_state_dict, mm_to_hf, read_mm_checkpoint,
                                     split_for_rank, write_mm_checkpoint)
from mindspeed_ms.checkpoint.hf_io import save_hf_state_dict
from mindspeed_ms.checkpoint.names import mm_to_hf_state_dict
from mindspeed_ms.checkpoint.tp_split import COL, GLU, REPLICATED, ROW, tp_kind
from mindspeed_ms.config.model_config import config_to_hf, load_model_json
from mindspeed_ms.config.param_shapes import mm_param_shapes
from mindspeed_ms.peft.lora_merge import LoRAMergeError, merge_lora_checkpoint, merge_lora_state_dict
from mindspeed_ms.peft.lora_model import target_matches
from mindspeed_ms.tools.make_tiny_checkpoint import random_mm_state_dict
from mindspeed_ms.training.checkpointing import save_checkpoint
from helpers.numerics import assert_close_scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


def random_adapters(shapes, r, seed=0, targets=TARGETS):
    """Random A and (non-zero) B for every 2-D target weight, peft names."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        module = name[:-len(".weight")] if name.endswith(".weight") else None
        if module is None or len(shape) != 2 or not any(target_matches(t, module) for t in targets):
            continue
        out[f"{module}.lora_A.default.weight"] = rng.standard_normal((r, shape[1])).astype(np.float32) * 0.1
        out[f"{module}.lora_B.default.weight"] = rng.standard_normal((shape[0], r)).astype(np.float32) * 0.1
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = load_model_json(small_model_json(str(tmp_path_factory.mktemp("m") / "model.json")))
    base = random_mm_state_dict(cfg, seed=5)
    lora = random_adapters(mm_param_shapes(cfg), r=4)
    return cfg, base, lora


def test_adapter_split_rules():
    llm = "text_decoder.decoder.layers.0."
    vit = "image_encoder.encoder.blocks.layers.0."
    cases = {llm + "self_attention.linear_qkv": (REPLICATED, ROW), llm + "mlp.linear_fc1": (REPLICATED, GLU),
             llm + "self_attention.linear_proj": (COL, REPLICATED), llm + "mlp.linear_fc2": (COL, REPLICATED),
             vit + "mlp.linear_fc1": (REPLICATED, ROW), vit + "self_attention.linear_proj": (COL, REPLICATED),
             "image_encoder.projector.encoder.linear_fc1": (REPLICATED, ROW)}
    for module, (a_kind, b_kind) in cases.items():
        assert tp_kind(module + ".lora_A.default.weight") == a_kind, module
        assert tp_kind(module + ".lora_B.default.weight") == b_kind, module


@pytest.mark.parametrize("tp", [2, 4])
def test_per_rank_merge_equals_split_of_full_merge(small, tp):
    cfg, base, lora = small
    if cfg.text.num_query_groups % tp:
        tp = cfg.text.num_query_groups
    scaling = 16 / 4
    full = merge_lora_state_dict(base, lora, scaling)
    layout = ParallelLayout.build(tp, [[1, 1]], [[2, 0]])
    for pp_rank in range(2):
        for tp_rank in range(tp):
            b = split_for_rank(base, tp_rank, pp_rank, layout)["model"]
            a = split_for_rank(lora, tp_rank, pp_rank, layout)["model"]
            want = split_for_rank(full, tp_rank, pp_rank, layout)["model"]
            got = merge_lora_state_dict(b, a, scaling)
            assert set(got) == set(want)
            for k in want:
                assert_close_scaled(got[k], want[k], 1e-6, k)


def test_merge_checkpoint_release_in_base_layout_and_mm_to_hf(small, tmp_path):
    cfg, base, lora = small
    base_layout = ParallelLayout.build(2, [[1, 1]], [[2, 0]])
    write_mm_checkpoint(tmp_path / "base", "release", base, base_layout)
    # the adapters come from a single-rank training run (tp1 / pp1), r and alpha recorded in `args`
    save_checkpoint(str(tmp_path / "lora"), 7, lora, args={"lora_r": 4, "lora_alpha": 16.0})
    out = merge_lora_checkpoint(str(tmp_path / "base"), str(tmp_path / "lora"), str(tmp_path / "merged"))
    assert out.endswith("release")
    hf_config = config_to_hf(cfg)
    # tied embeddings at pp 2: the last stage's output_layer copy is dropped by passing the config
    merged, reader = read_mm_checkpoint(tmp_path / "merged", hf_config=hf_config)
    assert (reader.layout.tp, reader.layout.pp, reader.tag) == (2, 2, "release")
    want = merge_lora_state_dict(base, lora, 4.0)
    assert set(merged) == set(want)
    for k in want:
        assert_close_scaled(merged[k], want[k], 1e-6, k)
    changed = [k for k in want if not np.array_equal(want[k], base[k])]
    assert len(changed) == len(lora) // 2
    # mm_to_hf takes it like any converted checkpoint
    save_hf_state_dict(mm_to_hf_state_dict(base, hf_config), str(tmp_path / "hf"), hf_config)
    mm_to_hf(str(tmp_path / "merged"), str(tmp_path / "hf"), str(tmp_path / "hf_merged"), progress=False)
    got_hf = load_hf_state_dict(str(tmp_path / "hf_merged"))
    want_hf = mm_to_hf_state_dict(want, hf_config)
    assert set(got_hf) == set(want_hf)
    for k in want_hf:
        assert_close_scaled(got_hf[k], want_hf[k], 1e-6, k)


def test_merge_lora_script(small, tmp_path):
    _, base, lora = small
    save_checkpoint(str(tmp_path / "base"), 1, base)
    save_checkpoint(str(tmp_path / "lora"), 3, lora)    # no recorded r / alpha: the flags give them
    script = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "merge_lora.py")
    cmd = [sys.executable, script, "--base-save-dir", str(tmp_path / "base"), "--lora-save-dir",
           str(tmp_path / "lora"), "--merge-save-dir", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "pass --lora-r and --lora-alpha" in res.stderr
    res = subprocess.run(cmd + ["--lora-r", "4", "--lora-alpha", "8"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    merged, _ = read_mm_checkpoint(tmp_path / "out")
    want = merge_lora_state_dict(base, lora, 2.0)
    for k in want:
        assert_close_scaled(merged[k], want[k], 1e-6, k)


def test_lora_checkpoint_is_20x_smaller_than_full(tmp_path):
    cfg = load_model_json(os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json"))
    shapes = mm_param_shapes(cfg)
    save_checkpoint(str(tmp_path / "full"), 1, random_mm_state_dict(cfg, seed=1))
    save_checkpoint(str(tmp_path / "lora"), 1, random_adapters(shapes, r=8))

    def size(d):
        return sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(d) for f in fs)
    assert size(tmp_path / "full") >= 20 * size(tmp_path / "lora")


def test_bad_merge_input(small, tmp_path):
    _, base, lora = small
    save_checkpoint(str(tmp_path / "base"), 1, base)
    save_checkpoint(str(tmp_path / "lora"), 1, lora, args={"lora_r": 4, "lora_alpha": 16})
    save_checkpoint(str(tmp_path / "nolora"), 1, {"text_decoder.decoder.final_layernorm.weight": np.ones(64, np.float32)})
    with pytest.raises(LoRAMergeError, match="--lora-save-dir .*no checkpoint"):
        merge_lora_checkpoint(str(tmp_path / "base"), str(tmp_path / "missing"), str(tmp_path / "o1"))
    with pytest.raises(LoRAMergeError, match="holds no LoRA adapters"):
        merge_lora_checkpoint(str(tmp_path / "base"), str(tmp_path / "nolora"), str(tmp_path / "o2"))
    with pytest.raises(LoRAMergeError, match="holds LoRA adapters itself"):
        merge_lora_checkpoint(str(tmp_path / "lora"), str(tmp_path / "lora"), str(tmp_path / "o3"))
    with pytest.raises(LoRAMergeError, match="rank 4 but lora_r is 8"):
        merge_lora_checkpoint(str(tmp_path / "base"), str(tmp_path / "lora"), str(tmp_path / "o4"), r=8)
    partial = {k: v for k, v in base.items() if "layers.1." not in k}
    save_checkpoint(str(tmp_path / "partial"), 1, partial)
    with pytest.raises(LoRAMergeError, match="the base checkpoint lacks"):
        merge_lora_checkpoint(str(tmp_path / "partial"), str(tmp_path / "lora"), str(tmp_path / "o5"))
