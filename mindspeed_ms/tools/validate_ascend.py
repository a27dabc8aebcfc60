"""`python -m mindspeed_ms.tools.validate_ascend [--out DIR]`: the first checks to run on an Ascend machine.

1. For each shipped layout (2B, 7B, 7B VPP, 72B, 72B LoRA DPO): MindSpore's dry run of one rank per
   pipeline stage (`MS_SIMULATION_LEVEL=1`, `RANK_SIZE` / `RANK_ID`: the graph is compiled for that
   rank of the full world and its memory counted, no device computes), with the script's own flags
   (read from the script by running it with a recording `msrun`), random weights and the demo
   data; it records whether it compiled and MindSpore's "Used peak memory" next to our estimate
   (`parallel.memory.estimate_memory`, the plan command's figure).
2. A few real steps of the 2B model on random weights on one NPU (bf16, flash attention) against a
   CPU fp32 run of the same first batch from the same checkpoint: the iteration-1 losses agree
   within a bf16 tolerance (2%).
3. Save / resume on the NPU: 2 steps, save, resume for a 3rd; its loss equals the uninterrupted
   3-step run's (0.5%).
One report: DIR/report.json and DIR/report.md. Without a CANN toolkit the command says so in one
line and exits 2 (`--print-commands` still lists the per-layout commands).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional
from mindspeed_ms.help_format import DefaultsHelpFormatter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EX = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")
PEAK = re.compile(r"Used peak memory usage \(without fragments\):\s*([0-9.]+)\s*([MG])")
LOSS = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? lm loss: ([0-9.E+-]+) \|")
DRY_MARK = "MS_SIMULATION_LEVEL"
BF16_RTOL = 0.02
RESUME_RTOL = 0.005


@dataclass
class Layout:
    name: str
    script: str
    entry: str
    model: str
    extra: List[str] = field(default_factory=list)          # flags added to the script's
    vit_pp: Optional[list] = None                           # model.json pipeline_num_layers overrides
    llm_pp: Optional[list] = None
    dpo: bool = False


LAYOUTS = [
    Layout("2b", "finetune_qwen2vl_2b.sh", "pretrain_vlm.py", "model_2b.json"),
    Layout("7b", "finetune_qwen2vl_7b.sh", "pretrain_vlm.py", "model_7b.json"),
    # MindSpeed-MM's 7B VPP example (its virtual_pipeline_parallel guide): vpp 3, non-uniform chunks
    Layout("7b_vpp", "finetune_qwen2vl_7b.sh", "pretrain_vlm.py", "model_7b.json",
           ["--virtual-pipeline-model-parallel-size", "3"],
           [[10, 10, 10, 2], [0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 0, 1], [4, 4, 4, 4], [4, 3, 2, 2]]),
    Layout("72b", "finetune_qwen2vl_72b.sh", "pretrain_vlm.py", "model_72b.json"),
    # the 72B LoRA DPO guide: TP 2, PP 4 on 8 NPUs, pipeline_num_layers [32,0,0,0] / [17,21,22,20]
    Layout("72b_lora_dpo", "finetune_qwen2vl_72b_dpo.sh", "posttrain_qwen2vl_dpo.py", "model_72b.json",
           [], [32, 0, 0, 0], [17, 21, 22, 20], dpo=True),
]


def has_cann() -> bool:
    """A CANN toolkit is installed (what MindSpore's Ascend backend needs)."""
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME")
    if home and os.path.isdir(home):
        return True
    return any(os.path.isdir(p) for p in ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann"))


# ---- the scripts' own flags ---------------------------------------------------------------------

def script_argv(script: str, workdir: str) -> List[str]:
    """The arguments `script` hands msrun, recorded by running it with a stand-in `msrun` in `workdir`
    (with a two-node loopback hostfile for the 72B script)."""
    bindir = os.path.join(workdir, "bin")
    os.makedirs(bindir, exist_ok=True)
    record = os.path.join(workdir, "argv.txt")
    fake = os.path.join(bindir, "msrun")
    with open(fake, "w") as f:
        f.write(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {record}\n")
    os.chmod(fake, os.stat(fake).st_mode | stat.S_IEXEC)
    hosts = os.path.join(workdir, "examples", "mindspore", "qwen2vl")
    os.makedirs(hosts, exist_ok=True)
    with open(os.path.join(hosts, "hostfile.txt"), "w") as f:
        f.write("127.0.0.1\n127.0.0.2\n")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    env.pop("NODE_RANK", None)
    subprocess.run(["bash", os.path.join(EX, script)], cwd=workdir, env=env, capture_output=True, text=True,
                   timeout=120)
    if os.path.isfile(record):
        lines = open(record).read().splitlines()
        os.remove(record)
        return lines
    raise RuntimeError(f"{script} did not call msrun")


def _opt(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def _set(argv, name, value):
    if name in argv:
        argv[argv.index(name) + 1] = value
    else:
        argv += [name, value]


def _drop(argv, name):
    if name in argv:
        i = argv.index(name)
        del argv[i:i + 2]


@dataclass
class LayoutRun:
    layout: str
    world: int
    entry: str
    argv: List[str]
    ranks: List[int]                 # one per pipeline stage (its first rank)
    estimates_gib: List[float]       # our per-stage estimate (busiest rank of the stage)


def layout_run(lay: Layout, work: str) -> LayoutRun:
    """The entry point, program arguments and world of one layout, as the kit runs it."""
    launch = script_argv(lay.script, os.path.join(work, "scripts", lay.name))
    world = int(_opt(launch, "--worker_num"))
    argv = launch[launch.index(lay.entry) + 1:]
    model = os.path.join(EX, lay.model)
    if lay.vit_pp is not None or lay.llm_pp is not None:
        d = json.load(open(model))
        d["image_encoder"]["vision_encoder"]["pipeline_num_layers"] = lay.vit_pp
        d["text_decoder"]["pipeline_num_layers"] = lay.llm_pp
        model = os.path.join(work, f"model_{lay.name}.json")
        with open(model, "w") as f:
            json.dump(d, f)
    _set(argv, "--mm-model", model)
    _set(argv, "--mm-data", os.path.join(work, "data", "dpo.json" if lay.dpo else "sft.json"))
    _drop(argv, "--mm-tool")
    for flag in ("--load", "--ref-model"):          # random weights (LoRA DPO: the random base is the reference)
        _drop(argv, flag)
    _drop(argv, "--save")                          # a simulated step's values are not worth saving
    _set(argv, "--train-iters", "1")
    argv += lay.extra
    ranks, est = stage_ranks_and_estimates(argv, world, lay)
    return LayoutRun(lay.name, world, lay.entry, argv, ranks, est)


def stage_ranks_and_estimates(argv, world, lay: Layout):
    from mindspeed_ms.arguments import parse_args, validate_args
    from mindspeed_ms.parallel.memory import GiB, estimate_memory
    from mindspeed_ms.parallel.shard_plan import LoRASpec, build_shard_plan
    args = parse_args(argv, prog=lay.entry)
    st = validate_args(args, world, "Ascend", require_data=False)
    cfg = st.parallel
    lora = LoRASpec(tuple(args.lora_target_modules), args.lora_r, args.lora_dropout) \
        if args.lora_target_modules else None
    plan = build_shard_plan(st.model, cfg, "Ascend", bf16=bool(args.bf16 and args.use_flash_attn), lora=lora)
    mem = estimate_memory(plan, "bf16", seq_length=args.seq_length, dpo=lay.dpo,
                          dpo_reference_copy=lay.dpo and lora is None)
    per_stage = world // cfg.pp
    return [s * per_stage for s in range(cfg.pp)], [round(m.total_bytes / GiB, 2) for m in mem]


def dry_command(run: LayoutRun, rank: int) -> Dict:
    """The environment and command line of one rank's MindSpore dry run."""
    env = {DRY_MARK: "1", "RANK_SIZE": str(run.world), "RANK_ID": str(rank), "GLOG_v": "1",
           "GLOG_logtostderr": "1"}
    return {"env": env, "cmd": [sys.executable, os.path.join(ROOT, run.entry)] + run.argv}


def command_line(c: Dict) -> str:
    import shlex
    return " ".join(f"{k}={v}" for k, v in c["env"].items()) + " " + " ".join(shlex.quote(x) for x in c["cmd"])


# ---- running and parsing ---------------------------------------------------------------------------

def parse_dry_log(text: str) -> Dict:
    """What a dry run's output says: MindSpore's used peak memory (GiB; the last value reported)."""
    found = PEAK.findall(text)
    if not found:
        return {"peak_gib": None}
    value, unit = found[-1]
    return {"peak_gib": round(float(value) / (1024.0 if unit == "M" else 1.0), 2)}


def run_dry(run: LayoutRun, out: str, timeout: int) -> List[Dict]:
    rows = []
    for stage, rank in enumerate(run.ranks):
        c = dry_command(run, rank)
        log = os.path.join(out, "logs", f"dry_{run.layout}_rank{rank}.log")
        t0 = time.time()
        try:
            p = subprocess.run(c["cmd"], env=dict(os.environ, **c["env"]), cwd=out, capture_output=True, text=True,
                               timeout=timeout)
            text, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            text, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), 124
        with open(log, "w") as f:
            f.write(text)
        parsed = parse_dry_log(text)
        rows.append({"layout": run.layout, "stage": stage, "rank": rank, "world": run.world,
                     "compiled": parsed["peak_gib"] is not None or rc == 0, "returncode": rc,
                     "peak_gib": parsed["peak_gib"], "estimate_gib": run.estimates_gib[stage],
                     "seconds": round(time.time() - t0, 1), "log": log, "command": command_line(c)})
    return rows


def losses(text: str) -> Dict[int, float]:
    return {int(i): float(v) for i, v in LOSS.findall(text)}


def compare_losses(npu: Dict[int, float], cpu: Dict[int, float], it: int, rtol: float) -> Dict:
    a, b = npu.get(it), cpu.get(it)
    ok = a is not None and b is not None and abs(a - b) <= rtol * max(abs(b), 1e-6)
    return {"iteration": it, "npu": a, "reference": b, "rtol": rtol, "ok": bool(ok)}


def real_steps(out: str, timeout: int) -> Dict:
    """2B on random weights: NPU bf16 steps vs a CPU fp32 run, and save / resume on the NPU."""
    py = sys.executable
    work = os.path.join(out, "real_2b")
    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, "random_2b")
    base = ["--mm-data", os.path.join(out, "data", "sft.json"), "--mm-model", os.path.join(EX, "model_2b.json"),
            "--micro-batch-size", "1", "--global-batch-size", "2", "--seq-length", "1024", "--lr", "1e-5",
            "--seed", "42", "--log-interval", "1", "--eval-iters", "0"]
    env_cpu = dict(os.environ, MS_DEVICE_TARGET="CPU")
    res = {}

    def run(env, flags, name):
        p = subprocess.run([py, os.path.join(ROOT, "pretrain_vlm.py")] + base + flags, env=env, cwd=work,
                           capture_output=True, text=True, timeout=timeout)
        with open(os.path.join(out, "logs", f"{name}.log"), "w") as f:
            f.write(p.stdout + p.stderr)
        return p.returncode, losses(p.stdout)
    # the random weights, written once on the CPU (fp32) so both runs start from the same model
    p = subprocess.run([py, "-c", "import sys; from mindspeed_ms.tools.validate_ascend import write_random_checkpoint; "
                        "write_random_checkpoint(sys.argv[1], sys.argv[2])", os.path.join(EX, "model_2b.json"), ckpt],
                       env=dict(env_cpu, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=timeout)
    rc = p.returncode
    rc_cpu, cpu = run(env_cpu, ["--train-iters", "1", "--load", ckpt], "cpu_fp32")
    npu_flags = ["--bf16", "--use-flash-attn", "--load", ckpt]
    rc3, npu3 = run(dict(os.environ), npu_flags + ["--train-iters", "3", "--save", os.path.join(work, "s3")],
                    "npu_3steps")
    rc2, _ = run(dict(os.environ), npu_flags + ["--train-iters", "2", "--save", os.path.join(work, "s2")], "npu_2steps")
    rcr, resumed = run(dict(os.environ), ["--bf16", "--use-flash-attn", "--load", os.path.join(work, "s2"),
                                          "--train-iters", "3"], "npu_resume")
    res["returncodes"] = {"init_cpu": rc, "cpu_fp32": rc_cpu, "npu_3steps": rc3, "npu_2steps": rc2, "npu_resume": rcr}
    res["npu_vs_cpu"] = compare_losses(npu3, cpu, 1, BF16_RTOL)
    res["resume"] = compare_losses(resumed, npu3, 3, RESUME_RTOL)
    return res


def write_random_checkpoint(model_json: str, out_dir: str, seed: int = 42):
    """The model of `model_json` randomly initialised (fp32, --seed) as an mm-convert tp1 pp1 release."""
    import mindspore as ms
    from mindspeed_ms.checkpoint.mm_io import write_mm_checkpoint
    from mindspeed_ms.checkpoint.pp_split import ParallelLayout
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration
    ms.set_seed(seed)
    cfg = load_model_json(model_json)
    model = Qwen2VLForConditionalGeneration(cfg)
    write_mm_checkpoint(out_dir, "release", model.mm_state_dict(),
                        ParallelLayout.build(1, [[cfg.text.num_layers]], [[cfg.vision.num_layers]]))


def prepare_data(out: str):
    """The demo SFT set and a synthetic preference set, with data.json files pointing at them."""
    d = os.path.join(out, "data")
    os.makedirs(d, exist_ok=True)
    if os.path.isfile(os.path.join(d, "sft.json")):
        return
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    py = sys.executable
    for cmd in ([py, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", f"{d}/hf"],
                [py, "-m", "mindspeed_ms.tools.make_demo_dataset", f"{d}/sft", "--train", "200", "--val", "7",
                 "--no-llava"],
                [py, "-m", "mindspeed_ms.rl.make_preference_dataset", f"{d}/dpo", "--train", "70", "--val", "2"]):
        subprocess.run(cmd, check=True, env=env, cwd=d, capture_output=True, timeout=900)
    for name, src, sub in (("sft", "data_tiny.json", "./data/tiny_demo"), ("dpo", "data_tiny_dpo.json", "./data/tiny_dpo")):
        text = open(os.path.join(EX, src)).read().replace("./ckpt/hf_path/Qwen2-VL-tiny", f"{d}/hf")
        with open(os.path.join(d, f"{name}.json"), "w") as f:
            f.write(text.replace(sub, f"{d}/{name}"))


# ---- the report ------------------------------------------------------------------------------------

def write_report(out: str, dry_rows: List[Dict], real: Optional[Dict], meta: Dict) -> Dict:
    """report.json (everything) and report.md (one table per check)."""
    rep = {"meta": meta, "dry_runs": dry_rows, "real_steps": real}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    md = ["# Ascend validation report", "",
          f"MindSpore {meta.get('mindspore', '?')}, {meta.get('time', '')}, host {meta.get('host', '')}", "",
          "## Dry runs (MS_SIMULATION_LEVEL=1, one rank per pipeline stage)", "",
          "| layout | stage | rank / world | compiled | MindSpore used peak (GiB) | our estimate (GiB) | ratio |",
          "|---|---|---|---|---|---|---|"]
    for r in dry_rows:
        ratio = f"{r['peak_gib'] / r['estimate_gib']:.2f}" if r["peak_gib"] and r["estimate_gib"] else "-"
        md.append(f"| {r['layout']} | {r['stage']} | {r['rank']} / {r['world']} | "
                  f"{'yes' if r['compiled'] else 'NO (rc ' + str(r['returncode']) + ')'} | "
                  f"{r['peak_gib'] if r['peak_gib'] is not None else '-'} | {r['estimate_gib']} | {ratio} |")
    md += ["", "## Real steps (2B, random weights)", ""]
    if real is None:
        md.append("not run (--dry-only)")
    else:
        md += ["| check | iteration | NPU loss | reference loss | tolerance | ok |", "|---|---|---|---|---|---|"]
        for k, label in (("npu_vs_cpu", "NPU bf16 vs CPU fp32"), ("resume", "resume vs uninterrupted")):
            c = real[k]
            md.append(f"| {label} | {c['iteration']} | {c['npu']} | {c['reference']} | {c['rtol']} | "
                      f"{'yes' if c['ok'] else 'NO'} |")
        md.append("")
        md.append("return codes: " + ", ".join(f"{k} {v}" for k, v in real["returncodes"].items()))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    return rep


def build_parser():
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.tools.validate_ascend", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", default="ascend_validation", help="report directory (created; default ./ascend_validation)")
    p.add_argument("--layouts", nargs="+", default=[l.name for l in LAYOUTS], choices=[l.name for l in LAYOUTS],
                   help="the shipped layouts to check")
    p.add_argument("--dry-only", action="store_true", help="skip the real 2B steps and the save / resume check")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per process (default 3600)")
    p.add_argument("--print-commands", action="store_true",
                   help="print every dry-run command (works without CANN) and exit")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if not a.print_commands and not has_cann():
        print("error: no CANN toolkit found (ASCEND_HOME_PATH unset, no /usr/local/Ascend/ascend-toolkit): "
              "validate_ascend runs on an Ascend machine; --print-commands lists what it would run", file=sys.stderr)
        return 2
    out = os.path.abspath(a.out)
    if not a.print_commands and os.path.exists(out) and os.listdir(out):
        print(f"error: --out {out} exists and is not empty; give a new directory", file=sys.stderr)
        return 2
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    try:
        runs = [layout_run(l, out) for l in LAYOUTS if l.name in a.layouts]
    except Exception as e:       # a script or model.json the kit cannot read: name it
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.print_commands:
        for r in runs:
            for stage, rank in enumerate(r.ranks):
                print(f"# {r.layout} stage {stage} (estimate {r.estimates_gib[stage]} GiB)")
                print(command_line(dry_command(r, rank)))
        return 0
    prepare_data(out)
    dry = [row for r in runs for row in run_dry(r, out, a.timeout)]
    real = None if a.dry_only else real_steps(out, a.timeout)
    import mindspore
    meta = {"mindspore": mindspore.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": os.uname().nodename}
    write_report(out, dry, real, meta)
    ok = all(r["compiled"] for r in dry) and (real is None or (real["npu_vs_cpu"]["ok"] and real["resume"]["ok"]))
    print(f"report: {os.path.join(out, 'report.md')} ({'all checks passed' if ok else 'some checks FAILED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
