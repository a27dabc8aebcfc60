"""End to end on the real tiny Qwen2-VL (random weights, real tokenizer), through the command lines:
- LoRA SFT with pretrain_vlm.py: the loss falls, the checkpoint holds only adapters and is >= 20x
  smaller than the base, merge_lora.py + mm_to_hf give an HF checkpoint whose logits equal the LoRA
  model's;
- DPO with LoRA (posttrain_qwen2vl_dpo.py) on the synthetic colour preference set: the reward margin
  and accuracy rise over training.
Both are slow (graph compilation and tens of steps on 2 cores)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers.numerics import assert_close_scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")
MODEL_JSON = os.path.join(QWEN, "model_tiny.json")
ENV = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3")


def sh(cmd, cwd, timeout=1500):
    # cwd: MindSpore writes rank_0/ (graph dumps) into the working directory
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=cwd)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def iteration_values(log, key):
    return [float(m) for m in re.findall(rf"{re.escape(key)}: ([-+0-9.E]+) \|", log)]


def _write_data_json(template, d, train, val, cache, out):
    """The example data.json `template` pointed at the files of `d / "pref"` and the HF dir `d / "hf"`."""
    cfg = json.load(open(QWEN + "/" + template))
    cfg["dataset_param"]["preprocess_parameters"]["model_name_or_path"] = str(d / "hf")
    cfg["dataset_param"]["basic_parameters"].update(
        dataset_dir=str(d / "pref"), dataset=str(d / "pref" / train), val_dataset=str(d / "pref" / val),
        cache_dir=str(d / cache))
    (d / out).write_text(json.dumps(cfg))


def build_tiny(d, model_json=MODEL_JSON, converter="Qwen2VLConverter", llm_layers=2, vit_layers=2):
    """In `d`: a random tiny HF checkpoint of `model_json` (hf/), its mm-convert conversion (mm/),
    the colour preference set (pref/) with data_dpo.json, and the same pictures as SFT samples
    (data_sft.json). Shared with the other families' end-to-end tests."""
    py = sys.executable
    sh([py, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", str(d / "hf"), "--mm-model", model_json,
        "--seed", "1234"], cwd=d)
    sh([py, "-m", "mindspeed_ms.checkpoint.cli", converter, "hf_to_mm", "--cfg.mm_dir", str(d / "mm"),
        "--cfg.hf_config.hf_dir", str(d / "hf"), "--cfg.parallel_config.llm_pp_layers", f"[[{llm_layers}]]",
        "--cfg.parallel_config.vit_pp_layers", f"[[{vit_layers}]]", "--cfg.parallel_config.tp_size", "1"], cwd=d)
    sh([py, "-m", "mindspeed_ms.rl.make_preference_dataset", str(d / "pref"), "--train", "16", "--val", "4"], cwd=d)
    _write_data_json("data_tiny_dpo.json", d, "train.json", "val.json", "cache_dpo", "data_dpo.json")
    # the same pictures as SFT samples (the right colour as the answer): one image size, one graph
    for split in ("train", "val"):
        rows = json.load(open(d / "pref" / f"{split}.json"))
        sft = [{"images": r["images"], "messages": r["messages"] + [r["chosen"]]} for r in rows]
        (d / "pref" / f"{split}_sft.json").write_text(json.dumps(sft))
    _write_data_json("data_tiny.json", d, "train_sft.json", "val_sft.json", "cache_sft", "data_sft.json")
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny"))


COMMON = ("--micro-batch-size 2 --global-batch-size 4 --seq-length 128 --lr-decay-style constant --weight-decay 0 "
          "--clip-grad 1.0 --seed 42 --log-interval 1 --eval-iters 1 --bf16 --use-flash-attn "
          "--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 8 --lora-alpha 16 "
          f"--mm-model {MODEL_JSON}")


def _size(d):
    return sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(d) for f in fs)


@pytest.mark.slow
def test_tiny_lora_sft_merge_and_convert(tiny):
    d = tiny
    log = sh([sys.executable, os.path.join(ROOT, "pretrain_vlm.py"), *COMMON.split(), "--lr", "1e-2",
              "--train-iters", "24", "--eval-interval", "100", "--load", str(d / "mm"), "--mm-data",
              str(d / "data_sft.json"), "--save", str(d / "lora")], cwd=d)
    losses = iteration_values(log, "lm loss")
    # random weights over a 151,936-word vocabulary start near ln(V) = 11.9; the frozen tied embedding
    # leaves the adapters a slow descent, but a steady one
    assert len(losses) == 24 and np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.1, losses
    from mindspeed_ms.training.checkpointing import load_checkpoint
    ck = load_checkpoint(str(d / "lora"))
    assert ck["model"] and all(".lora_A.default." in k or ".lora_B.default." in k for k in ck["model"])
    assert ck["args"]["lora_r"] == 8 and ck["args"]["lora_alpha"] == 16.0
    assert _size(d / "mm") >= 20 * _size(d / "lora" / "iter_0000024")
    sh([sys.executable, os.path.join(QWEN, "merge_lora.py"), "--base-save-dir", str(d / "mm"), "--lora-save-dir",
        str(d / "lora"), "--merge-save-dir", str(d / "merged")], cwd=d)
    sh([sys.executable, "-m", "mindspeed_ms.checkpoint.cli", "Qwen2VLConverter", "mm_to_hf", "--cfg.save_hf_dir",
        str(d / "hf_merged"), "--cfg.mm_dir", str(d / "merged"), "--cfg.hf_config.hf_dir", str(d / "hf"),
        "--cfg.parallel_config.llm_pp_layers", "[2]", "--cfg.parallel_config.vit_pp_layers", "[2]",
        "--cfg.parallel_config.tp_size", "1"], cwd=d)
    # the HF merged model == base + LoRA adapters of the checkpoint
    import mindspore as ms
    from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration
    from mindspeed_ms.peft.lora_model import apply_lora
    ms.set_context(mode=ms.PYNATIVE_MODE)
    merged = Qwen2VLForConditionalGeneration.from_pretrained(str(d / "hf_merged"))
    lora = Qwen2VLForConditionalGeneration.from_pretrained(str(d / "hf"))
    adapters = apply_lora(lora, ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"], r=8, alpha=16)
    for k, p in adapters.params.items():
        p.set_data(ms.Tensor(ck["model"][k]))
    rng = np.random.default_rng(0)
    ids = np.concatenate([[151652], [151655] * 4, [151653], rng.integers(100, 5000, size=10)])[None]
    pix = rng.standard_normal((16, 1176)).astype(np.float32)
    kw = dict(input_ids=ids, pixel_values=pix, image_grid_thw=np.array([[1, 4, 4]]))
    # fp32 rounding of two different computation orders through 18 trained adapters (ViT included):
    # ~1e-5 here; tests/test_lora_model.py holds the 1e-5 bound after a few steps on the small model
    assert_close_scaled(merged(**kw).logits.asnumpy(), lora(**kw).logits.asnumpy(), 2e-5)


@pytest.mark.slow
def test_tiny_dpo_lora_margin_and_accuracy_rise(tiny):
    d = tiny
    common = COMMON.replace("--lr-decay-style constant", "--lr-decay-style cosine --min-lr 1e-3 --lr-warmup-fraction 0.1")
    log = sh([sys.executable, os.path.join(ROOT, "posttrain_qwen2vl_dpo.py"), *common.split(), "--lr", "1e-2",
              "--train-iters", "40", "--eval-interval", "40", "--load", str(d / "mm"), "--ref-model", str(d / "mm"),
              "--mm-data", str(d / "data_dpo.json"), "--save", str(d / "dpo"), "--dpo-beta", "0.5",
              "--dpo-loss-type", "sigmoid"], cwd=d)
    assert "reference: the base model (LoRA adapters off" in log
    margins = iteration_values(log, "rewards/margins")
    accs = iteration_values(log, "rewards/accuracies")
    assert len(margins) == len(accs) == 40
    assert margins[0] == 0.0 and accs[0] == 0.0                 # policy == reference at step 1
    # from the untrained start to the last quarter (per-iteration values are over 4 pairs: noisy)
    assert np.mean(margins[-10:]) > np.mean(margins[:5]) + 0.03, margins
    assert np.mean(accs[-10:]) > max(0.55, np.mean(accs[:5])), accs
