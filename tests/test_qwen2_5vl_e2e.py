"""Qwen2.5-VL end to end through the command lines, on the tiny model (examples/mindspore/qwen2.5vl/
model_tiny.json: random weights, real tokenizer), selected by model.json's model_id alone:
- SFT on 2 msrun workers (data parallel): the loss falls;
- LoRA SFT: runs, the checkpoint holds only adapters;
- DPO with LoRA: runs and logs the reward metrics.
Slow (graph compilation and tens of steps on 2 cores)."""
import os
import sys

import numpy as np
import pytest

from test_lora_dpo_e2e import ENV, ROOT, build_tiny, iteration_values, sh

MODEL_JSON = os.path.join(ROOT, "examples", "mindspore", "qwen2.5vl", "model_tiny.json")
COMMON = ("--micro-batch-size 2 --global-batch-size 4 --seq-length 128 --lr-decay-style constant --weight-decay 0 "
          "--clip-grad 1.0 --seed 42 --log-interval 1 --eval-iters 1 --bf16 --use-flash-attn "
          f"--mm-model {MODEL_JSON}")
LORA = "--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 8 --lora-alpha 16"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny25"), MODEL_JSON, "Qwen2_5_VLConverter", llm_layers=2, vit_layers=4)


@pytest.mark.slow
def test_sft_on_two_msrun_workers_loss_falls(tiny):
    d = tiny
    env_path = os.path.dirname(sys.executable) + os.pathsep + ENV.get("PATH", "")
    log = sh(["env", f"PATH={env_path}", "msrun", "--worker_num=2", "--local_worker_num=2", "--master_port=8139",
              f"--log_dir={d}/msrun_log", "--join=True", os.path.join(ROOT, "pretrain_vlm.py"), *COMMON.split(),
              "--lr", "5e-3", "--train-iters", "12", "--eval-interval", "100", "--load", str(d / "mm"),
              "--mm-data", str(d / "data_sft.json")], cwd=d)
    worker = open(d / "msrun_log" / "worker_1.log").read()
    losses = iteration_values(log + worker, "lm loss")[-12:]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


@pytest.mark.slow
def test_lora_sft_and_dpo_smoke(tiny):
    d = tiny
    log = sh([sys.executable, os.path.join(ROOT, "pretrain_vlm.py"), *COMMON.split(), *LORA.split(), "--lr", "1e-2",
              "--train-iters", "4", "--eval-interval", "100", "--load", str(d / "mm"), "--mm-data",
              str(d / "data_sft.json"), "--save", str(d / "lora")], cwd=d)
    assert len(iteration_values(log, "lm loss")) == 4
    from mindspeed_ms.training.checkpointing import load_checkpoint
    ck = load_checkpoint(str(d / "lora"))
    assert ck["model"] and all(".lora_A.default." in k or ".lora_B.default." in k for k in ck["model"])
    assert any(k.startswith("image_encoder.encoder.blocks.layers.0.mlp.linear_fc1") for k in ck["model"])
    log = sh([sys.executable, os.path.join(ROOT, "posttrain_qwen2vl_dpo.py"), *COMMON.split(), *LORA.split(),
              "--lr", "1e-2", "--train-iters", "3", "--eval-interval", "100", "--load", str(d / "mm"),
              "--ref-model", str(d / "mm"), "--mm-data", str(d / "data_dpo.json"), "--dpo-beta", "0.5",
              "--dpo-loss-type", "sigmoid"], cwd=d)
    assert len(iteration_values(log, "rewards/margins")) == 3
