"""Host memory of one rank's lazy sharded setup (CPU dry mode) against the plan's weights + optimizer.

    python benchmarks/lazy_host_memory.py --work DIR --mm-model M.json --rank R --world W -- <flags>

Builds the tiny tokenizer and demo dataset under DIR once (the data side is the same for every
model), then in this process: RSS after the imports (baseline), `sharded_trainer.dry_run(...,
lazy=True)` for rank R (model built unallocated, plan applied, the rank's slices allocated with a
fresh init, AdamW moments of its slices), and the peak RSS (VmHWM). Prints one JSON line with the
peak, the baseline, the bytes the rank's parameters and moments hold, and `estimate_memory`'s
weights + optimizer of the rank's stage (bf16, the plan command's figure)."""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def prepare(work):
    if os.path.isfile(os.path.join(work, "data.json")):
        return
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT)
    for cmd in ([sys.executable, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", f"{work}/hf"],
                [sys.executable, "-m", "mindspeed_ms.tools.make_demo_dataset", f"{work}/data", "--train", "160",
                 "--val", "7", "--no-llava"]):
        subprocess.run(cmd, check=True, env=env, cwd=work, capture_output=True)
    text = open(os.path.join(ROOT, "examples/mindspore/qwen2vl/data_tiny.json")).read()
    text = text.replace("./ckpt/hf_path/Qwen2-VL-tiny", f"{work}/hf").replace("./data/tiny_demo", f"{work}/data")
    open(os.path.join(work, "data.json"), "w").write(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--mm-model", required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("flags", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    prepare(a.work)
    import mindspore  # noqa: F401
    from mindspeed_ms.parallel.lazy_params import allocated_bytes
    from mindspeed_ms.parallel.memory import estimate_memory
    from mindspeed_ms.training.sharded_trainer import dry_run
    base = _status("VmRSS")
    flags = [f for f in a.flags if f != "--"]
    argv = ["--mm-data", f"{a.work}/data.json", "--mm-model", a.mm_model, "--lr", "1e-5", "--train-iters", "1",
            "--bf16"] + flags
    tr = dry_run(argv, a.rank, a.world, lazy=True)
    peak = _status("VmHWM")
    params = list(tr.model.network.get_parameters())
    moments = list(tr.optimizer.exp_avg) + list(tr.optimizer.exp_avg_sq)
    st = estimate_memory(tr.plan, "bf16")[tr.coords.pp]
    out = {"rank": a.rank, "stage": tr.coords.pp, "tp": tr.coords.tp, "peak_rss": peak, "baseline_rss": base,
           "param_bytes": allocated_bytes(params), "moment_bytes": allocated_bytes(moments),
           "plan_weights": st.weight_bytes, "plan_optimizer": st.optimizer_bytes,
           "plan_params": st.params, "plan_trainable": st.trainable}
    out["ratio_peak_to_plan"] = peak / (st.weight_bytes + st.optimizer_bytes)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
