"""Run every benchmark and write benchmarks/RESULTS.md (date, machine, versions, tables, JSON lines).

    python benchmarks/run_all.py                 # the real figures (tens of minutes on 2 cores;
                                                 # convert_7b needs ~50 GB of free disk)
    python benchmarks/run_all.py --smoke         # every benchmark's --smoke (CI-sized), same report
    python benchmarks/run_all.py --only train_tiny preprocess --out /tmp/RESULTS.md

Benchmarks: train_tiny, train_small (train_throughput.py --config ...), train_memory_seq1024
(train_throughput.py --seq-length 1024), preprocess and preprocess_2threads (preprocess_throughput.py),
convert_7b, e2e_demo and e2e_longtail (train_e2e.py --dataset ...). Each runs in its own process, one after the other; its printed table and JSON lines go
into the report unchanged. A failing benchmark is reported with its exit code and the script exits non-zero.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BENCHMARKS = {
    "train_tiny": (["train_throughput.py", "--config", "tiny"], "Training step, tiny config: ours vs HF + torch"),
    "train_small": (["train_throughput.py", "--config", "small"], "Training step, small config: ours vs HF + torch"),
    "train_memory_seq1024": (["train_throughput.py", "--seq-length", "1024", "--rounds", "2", "--steps", "2", "--warmup", "2"],
                             "Peak memory at --seq-length 1024 (small config): chunked loss on vs off"),
    "preprocess": (["preprocess_throughput.py"], "Image preprocessing: ours vs HF Qwen2VLImageProcessor"),
    "preprocess_2threads": (["preprocess_throughput.py", "--num-threads", "2"],
                            "Image preprocessing, ours with num_threads=2 (opt-in) vs HF (one thread)"),
    "convert_7b": (["convert_7b.py"], "mm-convert on Qwen2-VL-7B shapes"),
    "e2e_demo": (["train_e2e.py", "--dataset", "demo"],
                 "Training on real data (demo set): ours packing/workers vs HF + PyTorch DataLoader"),
    "e2e_longtail": (["train_e2e.py", "--dataset", "longtail"],
                     "Training on real data (long-tail set): ours packing/workers vs HF + PyTorch DataLoader"),
}


def machine():
    model, cores = platform.processor() or "unknown", os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 ** 2:.0f} GiB RAM"
    except OSError:
        pass
    return f"{model}, {cores} cores, {mem}".strip(", ")


def versions():
    out = [f"python {platform.python_version()}"]
    for mod in ("mindspore", "torch", "transformers", "numpy"):
        try:
            res = subprocess.run([sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
                                 capture_output=True, text=True, timeout=120)
            out.append(f"{mod} {res.stdout.strip() or '?'}")
        except (OSError, subprocess.TimeoutExpired):
            out.append(f"{mod} ?")
    return ", ".join(out)


def load_average():
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def run_one(name, smoke, train_args=()):
    args, title = BENCHMARKS[name]
    extra = list(train_args) if name in ("train_tiny", "train_small") else []
    cmd = [sys.executable, os.path.join(HERE, args[0])] + args[1:] + extra + (["--smoke"] if smoke else [])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")
    load = load_average()
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - t0
    stdout = proc.stdout.strip()
    print(f"== {name}: exit {proc.returncode}, {wall:.0f} s", flush=True)
    print(stdout, flush=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr, flush=True)
    return {"name": name, "title": title, "cmd": " ".join(["python", "benchmarks/" + args[0]] + cmd[2:]),
            "rc": proc.returncode, "wall_s": wall, "stdout": stdout, "load_before": load,
            "stderr_tail": proc.stderr[-1500:] if proc.returncode else ""}


def report(results, smoke):
    lines = ["# Benchmark results", "",
             f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
             f"- machine: {machine()}",
             f"- versions: {versions()}",
             f"- mode: {'--smoke (CI-sized, not figures)' if smoke else 'full'}",
             "- produced by `python benchmarks/run_all.py`; each section is the benchmark's own output (table, "
             "then one JSON line per run and a summary line). The load average before each run is shown: the "
             "machine is shared, so timings are medians over alternated runs.", ""]
    for r in results:
        lines += [f"## {r['name']}: {r['title']}", "",
                  f"`{r['cmd']}` — exit {r['rc']}, {r['wall_s']:.0f} s, load average before: {r['load_before']}", "",
                  "```", r["stdout"] or "(no output)", "```", ""]
        if r["rc"]:
            lines += ["stderr (tail):", "", "```", r["stderr_tail"], "```", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="run each benchmark's --smoke")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="a subset (default: all)")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"), help="report path")
    p.add_argument("--rounds", type=int, help="train_tiny/train_small: A B alternations (default: theirs, 3)")
    p.add_argument("--steps", type=int, help="train_tiny/train_small: timed steps per run (default 4)")
    a = p.parse_args(argv)
    names = a.only or list(BENCHMARKS)
    train_args = (["--rounds", str(a.rounds)] if a.rounds else []) + (["--steps", str(a.steps)] if a.steps else [])
    results = [run_one(n, a.smoke, train_args) for n in names]
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(report(results, a.smoke))
    print(f"wrote {a.out}")
    return 1 if any(r["rc"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
