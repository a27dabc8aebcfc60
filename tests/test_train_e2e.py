"""pretrain_vlm.py end to end on the tiny checkpoint and demo data: bad input stops before any
compute; 2 msrun workers (DP) reproduce the single-process loss curve; a training checkpoint
converts with mm-convert mm_to_hf and loads (our from_pretrained and transformers) with the
trained weights."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY_MODEL = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json")
LOSS = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? lm loss: ([0-9.E+-]+) \|")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")   # msrun runs 'python'
    env["GLOG_v"] = "3"
    return env


def _flags(work, extra=""):
    return (f"--tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 --micro-batch-size 2 "
            f"--global-batch-size 4 --seq-length 256 --lr 2e-3 --lr-decay-style cosine --lr-warmup-iters 1 "
            f"--train-iters 5 --clip-grad 1.0 --seed 42 --mm-data {work}/data.json --mm-model {TINY_MODEL} "
            f"--load {work}/mm --log-interval 1 --eval-interval 100 --eval-iters 1 {extra}").split()


def test_bad_input_stops_before_compute(tmp_path, capfd, monkeypatch):
    from mindspeed_ms.training.pretrain import main
    rc = main(f"--mm-data {tmp_path}/missing.json --mm-model {TINY_MODEL} --seq-length 64 --lr 1e-4 "
              f"--train-iters 2".split())
    err = [l for l in capfd.readouterr().err.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "--mm-data" in err[0] and "no such file" in err[0]
    data = tmp_path / "d.json"
    data.write_text("{}")
    monkeypatch.setenv("RANK_SIZE", "2")            # as if launched as 2 workers
    monkeypatch.setenv("RANK_ID", "0")
    rc = main(f"--mm-data {data} --mm-model {TINY_MODEL} --seq-length 64 --lr 1e-4 --train-iters 2 "
              f"--tensor-model-parallel-size 2".split())
    err = [l for l in capfd.readouterr().err.splitlines() if l.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "semi-auto parallel" in err[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny HF checkpoint (real tokenizer) -> mm-convert hf_to_mm, and a small demo dataset."""
    w = tmp_path_factory.mktemp("e2e")
    py, env = sys.executable, _env()
    for cmd in ([py, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", f"{w}/hf"],
                [py, "-m", "mindspeed_ms.tools.make_demo_dataset", f"{w}/data", "--train", "48", "--val", "8",
                 "--no-llava"],
                [py, "-m", "mindspeed_ms.checkpoint.cli", "Qwen2VLConverter", "hf_to_mm", "--cfg.mm_dir", f"{w}/mm",
                 "--cfg.hf_config.hf_dir", f"{w}/hf", "--cfg.parallel_config.llm_pp_layers", "[[2]]",
                 "--cfg.parallel_config.vit_pp_layers", "[[2]]", "--cfg.parallel_config.tp_size", "1"]):
        subprocess.run(cmd, check=True, env=env, cwd=str(w), capture_output=True, timeout=300)
    text = open(os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "data_tiny.json")).read()
    text = text.replace("./ckpt/hf_path/Qwen2-VL-tiny", f"{w}/hf").replace("./data/tiny_demo", f"{w}/data")
    (w / "data.json").write_text(text)
    return w


def _losses(out):
    return {int(i): float(v) for i, v in LOSS.findall(out)}


@pytest.mark.slow
def test_dp2_msrun_equals_single_process_and_converts_to_hf(work):
    env = _env()
    single = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_vlm.py")]
                            + _flags(work, f"--save {work}/save1 --ckpt-format torch"),
                            env=env, cwd=str(work), capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    dp = subprocess.run(["msrun", "--worker_num=2", "--local_worker_num=2", "--master_port=8129",
                         f"--log_dir={work}/msrun_log", "--join=True", os.path.join(ROOT, "pretrain_vlm.py")]
                        + _flags(work, f"--save {work}/save2"),
                        env=env, cwd=str(work), capture_output=True, text=True, timeout=900)
    assert dp.returncode == 0, dp.stdout[-3000:] + dp.stderr[-3000:]
    a, b = _losses(single.stdout), _losses(dp.stdout)
    assert sorted(a) == list(range(1, 6)) and sorted(b) == list(range(1, 6)), (single.stdout[-2000:], dp.stdout[-2000:])
    for it in a:
        assert abs(a[it] - b[it]) <= 1e-5, (it, a[it], b[it])
    assert a[5] < a[1]
    assert "graph compilations: 1 training step(s)" in single.stdout
    # under msrun (no TTY): the logging rank's progress lines, Megatron's fields first on the iteration
    # line, and rank 0's Megatron memory line
    sys.path.insert(0, HERE)
    from test_train_log_lines import MEGATRON_LINE, MEMORY_LINE
    lines = dp.stdout.splitlines()
    its = [l for l in lines if "elapsed time per iteration" in l]
    assert len(its) == 5 and all(MEGATRON_LINE.search(l) and " | throughput: " in l for l in its), its
    assert len([l for l in lines if " progress: [" in l]) == 5
    worker_logs = "".join(open(os.path.join(work, "msrun_log", f)).read() for f in os.listdir(f"{work}/msrun_log"))
    mem = [MEMORY_LINE.match(l.strip()) for l in worker_logs.splitlines() if "memory (MB)" in l]
    assert len(mem) == 1 and mem[0] and mem[0][1] == "0", mem

    # the trained checkpoint -> HF -> our from_pretrained and transformers, with the trained weights
    from mindspeed_ms.training.checkpointing import load_checkpoint
    trained = load_checkpoint(f"{work}/save1")["model"]
    hf_out = f"{work}/hf_trained"
    subprocess.run([sys.executable, "-m", "mindspeed_ms.checkpoint.cli", "Qwen2VLConverter", "mm_to_hf",
                    "--cfg.save_hf_dir", hf_out, "--cfg.mm_dir", f"{work}/save1", "--cfg.hf_config.hf_dir",
                    f"{work}/hf", "--cfg.parallel_config.llm_pp_layers", "[2]",
                    "--cfg.parallel_config.vit_pp_layers", "[2]", "--cfg.parallel_config.tp_size", "1"],
                   check=True, env=env, capture_output=True, timeout=300)
    from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration
    ours = Qwen2VLForConditionalGeneration.from_pretrained(hf_out)
    name = "text_decoder.decoder.layers.1.self_attention.linear_qkv.weight"
    np.testing.assert_array_equal(ours.parameters_dict()[name].asnumpy(), trained[name])
    initial = load_checkpoint(f"{work}/mm")["model"][name]
    assert np.abs(trained[name] - initial).max() > 0           # training changed it
    import torch
    from transformers import Qwen2VLForConditionalGeneration as HFModel
    hf = HFModel.from_pretrained(hf_out, torch_dtype=torch.float32)
    emb = hf.state_dict()
    key = [k for k in emb if k.endswith("embed_tokens.weight")][0]
    np.testing.assert_array_equal(emb[key].numpy(), trained["text_decoder.embedding.word_embeddings.weight"])
