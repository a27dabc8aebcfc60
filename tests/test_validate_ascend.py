"""The Ascend validation kit (mindspeed_ms/tools/validate_ascend.py) on a machine without CANN: one
line and exit 2; the per-layout dry-run commands (one rank per pipeline stage, MindSpore's
simulation variables, the shipped scripts' own flags, random weights) are valid command lines; the
dry-run log parser and the report (JSON + markdown)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

from mindspeed_ms.tools import validate_ascend as va  # noqa: E402


def test_without_cann_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")}
    env["PYTHONPATH"] = ROOT
    if va.has_cann():
        pytest.skip("this machine has a CANN toolkit")
    p = subprocess.run([sys.executable, "-m", "mindspeed_ms.tools.validate_ascend", "--out", str(tmp_path / "r")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CANN toolkit found"), p.stderr
    assert not (tmp_path / "r").exists()


class _Runs(dict):
    """layout name -> LayoutRun, built on first use (the 72B plans take a while)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def __missing__(self, name):
        self[name] = va.layout_run(next(lay for lay in va.LAYOUTS if lay.name == name), str(self.out))
        return self[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("va")
    return _Runs(out), out


@pytest.mark.parametrize("name,world,pp,entry", [
    ("2b", 8, 1, "pretrain_vlm.py"), ("7b", 8, 4, "pretrain_vlm.py"),
    pytest.param("7b_vpp", 8, 4, "pretrain_vlm.py", marks=pytest.mark.slow),
    pytest.param("72b", 32, 8, "pretrain_vlm.py", marks=pytest.mark.slow),
    ("72b_lora_dpo", 8, 4, "posttrain_qwen2vl_dpo.py")])
def test_per_layout_dry_commands(runs, name, world, pp, entry):
    from mindspeed_ms.arguments import parse_args, validate_args
    r = runs[0][name]
    assert r.world == world and r.entry == entry and r.ranks == [s * world // pp for s in range(pp)]
    assert len(r.estimates_gib) == pp and all(0 < e < 64 for e in r.estimates_gib)
    for rank in r.ranks:
        c = va.dry_command(r, rank)
        assert c["env"]["MS_SIMULATION_LEVEL"] == "1" and c["env"]["RANK_SIZE"] == str(world)
        assert c["env"]["RANK_ID"] == str(rank) and c["cmd"][1].endswith(entry)
        argv = c["cmd"][2:]
        assert "--load" not in argv and "--ref-model" not in argv and "--save" not in argv    # random weights
        assert argv[argv.index("--train-iters") + 1] == "1" and "--bf16" in argv
    args = parse_args(r.argv, prog=entry)
    st = validate_args(args, world, "Ascend", require_data=False)
    assert st.parallel.pp == pp and (st.parallel.vpp == 3) == (name == "7b_vpp")
    if name == "72b_lora_dpo":
        assert args.lora_target_modules and st.parallel.tp == 2
        model = json.load(open(args.mm_model))
        assert model["text_decoder"]["pipeline_num_layers"] == [17, 21, 22, 20]


@pytest.mark.slow
def test_estimates_are_the_plan_commands(runs):
    import io
    from mindspeed_ms.parallel.plan import run
    r = runs[0]["72b"]
    a = r.argv
    out = io.StringIO()
    run(["--mm-model", a[a.index("--mm-model") + 1], "--tensor-model-parallel-size", "2",
         "--pipeline-model-parallel-size", "8", "--micro-batch-size", "1", "--global-batch-size",
         a[a.index("--global-batch-size") + 1], "--seq-length", "1024", "--num-devices", "32",
         "--use-distributed-optimizer"], out)
    totals = [float(l.split()[6]) for l in out.getvalue().splitlines() if l.strip()[:1].isdigit() and len(l.split()) == 8]
    assert [round(t, 2) for t in totals] == r.estimates_gib


def test_print_commands_works_without_cann(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mindspeed_ms.tools.validate_ascend", "--print-commands", "--out",
                        str(tmp_path / "c"), "--layouts", "7b", "72b_lora_dpo"],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    cmds = [l for l in p.stdout.splitlines() if l.startswith("MS_SIMULATION_LEVEL=1")]
    assert len(cmds) == 4 + 4 and sum("posttrain_qwen2vl_dpo.py" in c for c in cmds) == 4


def test_dry_log_parser_and_report(tmp_path, runs, monkeypatch):
    """run_dry over a layout with MindSpore's process replaced by one that prints what MindSpore's
    simulation prints; the report holds each stage's peak next to the estimate."""
    assert va.parse_dry_log("x\n[INFO] Used peak memory usage (without fragments): 23552M\n") == {"peak_gib": 23.0}
    assert va.parse_dry_log("Used peak memory usage (without fragments): 1.5G") == {"peak_gib": 1.5}
    assert va.parse_dry_log("nothing") == {"peak_gib": None}
    r = runs[0]["7b"]

    class P:
        def __init__(self, rank):
            self.returncode = 0 if rank != 4 else 1
            self.stdout = "" if rank == 4 else f"Used peak memory usage (without fragments): {1024 * (10 + rank)}M\n"
            self.stderr = ""

    monkeypatch.setattr(va.subprocess, "run", lambda cmd, env=None, **kw: P(int(env["RANK_ID"])))
    out = tmp_path / "rep"
    (out / "logs").mkdir(parents=True)
    rows = va.run_dry(r, str(out), 10)
    assert [x["peak_gib"] for x in rows] == [10.0, 12.0, None, 16.0]
    assert [x["compiled"] for x in rows] == [True, True, False, True]
    real = {"returncodes": {"cpu_fp32": 0}, "npu_vs_cpu": va.compare_losses({1: 11.95}, {1: 12.0}, 1, va.BF16_RTOL),
            "resume": va.compare_losses({3: 10.0}, {3: 11.0}, 3, va.RESUME_RTOL)}
    assert real["npu_vs_cpu"]["ok"] and not real["resume"]["ok"]
    rep = va.write_report(str(out), rows, real, {"mindspore": "2.10.0", "time": "t", "host": "h"})
    saved = json.load(open(out / "report.json"))
    assert saved == json.loads(json.dumps(rep)) and len(saved["dry_runs"]) == 4
    md = (out / "report.md").read_text()
    assert "| 7b | 1 | 2 / 8 | yes | 12.0 | " in md and "| 7b | 2 | 4 / 8 | NO (rc 1) | - |" in md
    assert "| NPU bf16 vs CPU fp32 | 1 | 11.95 | 12.0 | 0.02 | yes |" in md
    assert "| resume vs uninterrupted | 3 | 10.0 | 11.0 | 0.005 | NO |" in md
