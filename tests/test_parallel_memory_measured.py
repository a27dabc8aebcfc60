"""The fp32 memory estimate (`parallel.memory.estimate_memory`, tp 1) against the measured peak of a
real CPU training step of the tiny model (real 151,936-token vocabulary).

What is compared (one fresh subprocess, so nothing else lives in the process):
- baseline: resident memory (VmRSS) after `import mindspore`, the package imports and the runtime
  context, before the model exists;
- compile: the VmRSS growth across `MicroStep.compile` + `OptimizerStep.compile` (graph IR and
  kernels: not modelled by the estimate), measured right before the first step;
- peak: VmHWM (the kernel's peak resident set) after two steps (the first one warms the runtime);
- measured = peak - baseline - compile: weights, gradient accumulators, the backward's gradient
  outputs, AdamW moments and the step's activations, the terms the estimate models.
The step is the code path of `pretrain_vlm.py` on CPU: `build_model` (fp32, chunked loss),
`MicroStep` (forward + backward + fp32 accumulation) and `OptimizerStep` (clip + AdamW), one
micro-batch of one sample: one 224x224 image (256 patches) and text up to the sequence length.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_JSON = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json")
PATCHES = 256                     # one 224x224 image: 16 x 16 patches of 14 px -> 64 tokens
MiB = 1024 ** 2


def _proc_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, val = line.split(":", 1)
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(val.split()[0]) * 1024
    return out


def worker(seq_length):
    """Run in the subprocess: build, compile, step twice; print the measured numbers as JSON."""
    import numpy as np
    import mindspore as ms

    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.training.loss_weights import make_loss_weights
    from mindspeed_ms.training.optimizer import AdamW
    from mindspeed_ms.training.train_step import TRAIN_KEYS, MicroStep, OptimizerStep, make_accumulators
    from mindspeed_ms.training.build import build_model

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    baseline = _proc_status()["VmRSS"]

    cfg = load_model_json(TINY_JSON)

    class Args:                          # the two flags build_model reads
        bf16 = False
        use_flash_attn = False
    loss_cell = build_model(cfg, Args, "CPU")
    params = [p for p in loss_cell.trainable_params()]
    accum = make_accumulators(params)
    optimizer = AdamW(params, weight_decay=0.01)
    micro = MicroStep(loss_cell, params, accum)
    opt_step = OptimizerStep(accum, optimizer, 1.0, 1)

    rng = np.random.default_rng(0)
    merged = PATCHES // 4
    n_text = seq_length - merged - 2
    ids = ([cfg.vision_start_token_id] + [cfg.img_context_token_id] * merged + [cfg.vision_end_token_id]
           + list(rng.integers(0, 151000, size=n_text)))
    prompt = merged + 2 + n_text // 2
    labels = [-100] * prompt + ids[prompt:]
    ids, labels = np.array([ids]), np.array([labels])
    pixels = rng.standard_normal((PATCHES, 3 * 2 * 14 * 14)).astype(np.float32)
    batch, _ = loss_cell.network.prepare_batch(ids, np.ones_like(ids), pixels, np.array([[1, 16, 16]]),
                                               labels=labels)
    batch["loss_weights"] = make_loss_weights(batch["labels"], "default", 1, 1)
    tensors = [ms.Tensor(batch[k]) for k in TRAIN_KEYS]
    stats = ms.Tensor(np.array([0.0, float(seq_length)], np.float32))

    before_compile = _proc_status()["VmRSS"]
    micro.compile(ms.Tensor(True), *tensors)
    opt_step.compile(stats, *optimizer.host_scalars(1e-5))
    compile_bytes = _proc_status()["VmRSS"] - before_compile

    losses = []
    for _ in range(2):
        loss = micro(ms.Tensor(True), *tensors)
        opt_step(ms.Tensor(np.array([float(loss.asnumpy()), float(seq_length)], np.float32)),
                 *optimizer.host_scalars(1e-5))
        optimizer.step += 1
        losses.append(float(loss.asnumpy()))
    peak = _proc_status()["VmHWM"]
    print("RESULT " + json.dumps({"baseline": baseline, "compile": compile_bytes, "peak": peak,
                                  "measured": peak - baseline - compile_bytes, "losses": losses,
                                  "compilations": micro.compilations,
                                  "params": sum(int(np.prod(p.shape)) for p in params)}), flush=True)


def estimate(seq_length):
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.parallel.config import validate_parallel_config
    from mindspeed_ms.parallel.memory import estimate_memory
    from mindspeed_ms.parallel.plan import build_parser
    from mindspeed_ms.parallel.shard_plan import build_shard_plan

    args = build_parser().parse_args(["--mm-model", TINY_JSON, "--micro-batch-size", "1", "--global-batch-size",
                                      "1", "--seq-length", str(seq_length), "--num-devices", "1", "--fp32"])
    model = load_model_json(TINY_JSON)
    cfg = validate_parallel_config(args, model, 1)
    plan = build_shard_plan(model, cfg, backend="CPU", bf16=False, vision_patches=PATCHES)
    (stage,) = estimate_memory(plan, dtype="fp32", vision_patches=PATCHES, seq_length=seq_length)
    return stage


def measure(seq_length):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(seq_length)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"memory worker failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-3000:]}")


def check(seq_length):
    got = measure(seq_length)
    est = estimate(seq_length)
    assert got["compilations"] == 1, got          # the steps reused the compiled graph
    assert all(l == l and l > 0 for l in got["losses"]), got
    rel = (est.total_bytes - got["measured"]) / got["measured"]
    print(f"\nseq {seq_length}: estimate {est.total_bytes / MiB:.0f} MiB (weights {est.weight_bytes / MiB:.0f}, "
          f"grads {est.grad_bytes / MiB:.0f}, optimizer {est.optimizer_bytes / MiB:.0f}, activations "
          f"{est.activation_bytes / MiB:.0f}) vs measured {got['measured'] / MiB:.0f} MiB (peak RSS "
          f"{got['peak'] / MiB:.0f} - baseline {got['baseline'] / MiB:.0f} - compile {got['compile'] / MiB:.0f}); "
          f"{rel:+.1%}")
    assert abs(rel) <= 0.25, (seq_length, est.total_bytes, got)


def test_memory_estimate_matches_cpu_step_seq256():
    check(256)


@pytest.mark.slow
def test_memory_estimate_matches_cpu_step_seq1024():
    check(1024)


if __name__ == "__main__":
    worker(int(sys.argv[1]))
