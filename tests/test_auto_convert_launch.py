"""python -m auto_convert launch: MindSpeed-MM torchrun scripts -> msrun scripts for mindspeed-ms.

The scripts are executed for real with bash, with `torchrun`/`msrun` replaced by a recorder, so
what is compared is the argument vector each launcher would receive."""
import os
import stat
import subprocess
import sys

import pytest

from auto_convert.launch import LaunchConversionError, convert_launch_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "fixtures", "torch_scripts")
NAMES = ["finetune_qwen2vl_2b.sh", "finetune_qwen2vl_7b.sh", "finetune_qwen2vl_72b.sh", "finetune_qwen2vl_72b_dpo.sh"]


def _run_recorded(script_path, workdir):
    """Run a launch script with bash; return the argv that torchrun / msrun received."""
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    record = workdir / "argv.txt"
    for tool in ("torchrun", "msrun"):
        p = bindir / tool
        p.write_text(f"#!/bin/bash\necho {tool} > {record}\nprintf '%s\\n' \"$@\" >> {record}\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    # the 72B scripts find the node rank from this host's address in the hostfile, which
    # MindSpeed-MM keeps next to the script: examples/qwen2vl/ (torch) or examples/mindspore/qwen2vl/
    host = bindir / "hostname"
    host.write_text("#!/bin/bash\necho 127.0.0.1\n")
    host.chmod(host.stat().st_mode | stat.S_IEXEC)
    for d in ("examples/qwen2vl", "examples/mindspore/qwen2vl"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
        (workdir / d / "hostfile.txt").write_text("127.0.0.1\n10.0.0.2\n")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(script_path)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert record.exists(), f"{script_path} never called torchrun/msrun:\n{r.stdout}\n{r.stderr}"
    lines = record.read_text().splitlines()
    return lines[0], lines[1:]


def _convert_file(src, dst):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "auto_convert", "launch", str(src), "-o", str(dst)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("name", NAMES)
def test_converted_script_launches_like_the_mindspore_scripts(name, tmp_path):
    src = os.path.join(SCRIPTS, name)
    (tmp_path / "torch").mkdir()
    (tmp_path / "ms").mkdir()
    launcher, torch_argv = _run_recorded(src, tmp_path / "torch")
    assert launcher == "torchrun"
    out = tmp_path / "ms" / name
    r = _convert_file(src, out)
    assert r.returncode == 0, r.stderr
    assert os.access(out, os.X_OK) == os.access(src, os.X_OK)
    launcher, ms_argv = _run_recorded(out, tmp_path / "ms")
    assert launcher == "msrun"

    # torchrun's topology, read back from what torchrun received.  The msrun options are MindSpeed-MM's
    # (mindspeed_mm_compat.md section 2) plus --join=True, so that msrun waits for the workers as
    # torchrun does (see auto_convert/launch.py)
    t = dict(zip(torch_argv[0:10:2], torch_argv[1:10:2]))
    nproc, nnodes = int(t["--nproc_per_node"]), int(t["--nnodes"])
    expected_launch = ["--local_worker_num", str(nproc), "--worker_num", str(nproc * nnodes),
                       "--node_rank", t["--node_rank"], "--master_addr", t["--master_addr"],
                       "--master_port", t["--master_port"], "--log_dir", "msrun_log", "--join=True",
                       "--bind_core=True"]
    n = len(expected_launch)
    assert ms_argv[:n] == expected_launch
    entry = "posttrain_qwen2vl_dpo.py" if "dpo" in name else "pretrain_vlm.py"
    assert torch_argv[10] == entry and ms_argv[n] == entry
    # program arguments: torch's, with --ai-framework mindspore before --distributed-backend and the
    # examples paths moved to examples/mindspore/qwen2vl/
    want = [a.replace("./examples/qwen2vl/", "./examples/mindspore/qwen2vl/") for a in torch_argv[11:]]
    k = want.index("--distributed-backend")
    want[k:k] = ["--ai-framework", "mindspore"]
    assert ms_argv[n + 1:] == want
    assert ms_argv[-4:] == ["--ai-framework", "mindspore", "--distributed-backend", "nccl"]
    size = "72b" if "72b" in name else name.split("_")[-1][:-3]
    assert f"./examples/mindspore/qwen2vl/model_{size}.json" in ms_argv
    if name == "finetune_qwen2vl_72b.sh":  # two hosts in hostfile.txt, 16 NPUs each
        assert ms_argv[:4] == ["--local_worker_num", "16", "--worker_num", "32"]


@pytest.mark.parametrize("name", NAMES)
def test_conversion_is_idempotent_and_keeps_the_rest(name):
    text = open(os.path.join(SCRIPTS, name)).read()
    once = convert_launch_script(text, name)
    twice = convert_launch_script(once.text, name)
    assert twice.text == once.text and twice.changes == []
    assert "torchrun" not in once.text
    # everything but the launch lines and paths is untouched (comments, env, the throughput tail)
    changed = [l for l in once.text.splitlines() if l not in text.splitlines()]
    assert all(("examples/mindspore/qwen2vl/" in l) or l.strip().rstrip("\\").strip() in (
        "--local_worker_num $NPUS_PER_NODE", "--worker_num $WORLD_SIZE", "--master_port $MASTER_PORT",
        "--log_dir msrun_log", "--join=True", "--bind_core=True", "--ai-framework mindspore")
        or l.startswith("msrun $DISTRIBUTED_ARGS ") for l in changed), changed


def test_inline_options_and_equals_form():
    text = ("#!/bin/bash\n"
            "torchrun --nproc_per_node=4 --nnodes=2 --node_rank=$RANK --master_addr=$ADDR --master_port=29500 "
            "./pretrain_vlm.py --mm-data examples/qwen2vl/data_2b.json 2>&1 | tee log.txt\n")
    out = convert_launch_script(text).text
    assert out == ("#!/bin/bash\n"
                   "msrun --local_worker_num=4 --worker_num=8 --node_rank=$RANK --master_addr=$ADDR --master_port=29500 "
                   "--log_dir msrun_log --join=True --bind_core=True pretrain_vlm.py "
                   "--mm-data examples/mindspore/qwen2vl/data_2b.json "
                   "--ai-framework mindspore 2>&1 | tee log.txt\n")
    assert convert_launch_script(out).text == out


def test_python_m_torch_distributed_and_computed_world_size():
    text = ("N=8\nM=$1\n"
            "python -m torch.distributed.run --nproc_per_node $N --nnodes $M posttrain_qwen2vl_dpo.py --lr 1e-5\n")
    out = convert_launch_script(text).text
    # no WORLD_SIZE in the script: the product is computed where msrun is called
    assert out.splitlines()[2] == ("msrun --local_worker_num $N --worker_num $(($N*$M)) --log_dir msrun_log "
                                   "--join=True --bind_core=True posttrain_qwen2vl_dpo.py --lr 1e-5 "
                                   "--ai-framework mindspore")


def test_lines_it_cannot_convert_are_reported_with_numbers(tmp_path):
    text = ("#!/bin/bash\n"
            "DISTRIBUTED_ARGS=\"--nproc_per_node 8 --rdzv_backend c10d\"\n"
            "torchrun $DISTRIBUTED_ARGS pretrain_vlm.py\n"
            "torchrun --nproc_per_node 2 my_train.py\n"
            "torchrun $UNDEFINED_ARGS pretrain_vlm.py\n")
    with pytest.raises(LaunchConversionError) as e:
        convert_launch_script(text, "bad.sh")
    lines = [line for line, _ in e.value.problems]
    assert lines == [2, 4, 5]
    src = tmp_path / "bad.sh"
    src.write_text(text)
    r = _convert_file(src, tmp_path / "out.sh")
    assert r.returncode == 1
    assert "bad.sh:2: torchrun option --rdzv_backend has no msrun equivalent" in r.stderr
    assert "bad.sh:4: entry script 'my_train.py'" in r.stderr
    assert "bad.sh:5: torchrun uses $UNDEFINED_ARGS" in r.stderr
    assert not (tmp_path / "out.sh").exists()


def test_in_place_and_default_output(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    src = tmp_path / "finetune_qwen2vl_7b.sh"
    src.write_text(open(os.path.join(SCRIPTS, "finetune_qwen2vl_7b.sh")).read())
    r = subprocess.run([sys.executable, "-m", "auto_convert", "launch", str(src)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    default = tmp_path / "finetune_qwen2vl_7b_ms.sh"
    assert "msrun $DISTRIBUTED_ARGS" in default.read_text() and "torchrun" in src.read_text()
    r = subprocess.run([sys.executable, "-m", "auto_convert", "launch", str(src), "--in-place"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert src.read_text() == default.read_text()


OURS = os.path.join(ROOT, "examples", "mindspore", "qwen2vl")


@pytest.mark.parametrize("name", NAMES)
def test_converted_launch_equals_our_example_scripts(name, tmp_path):
    """Once examples/mindspore/qwen2vl/<name> exists: its msrun launch and ours from the torch
    script use the same launcher options, entry script and arguments."""
    ours = os.path.join(OURS, name)
    if not os.path.exists(ours):
        pytest.skip(f"{ours} not written yet")
    (tmp_path / "ours").mkdir()
    (tmp_path / "conv").mkdir()
    out = tmp_path / "conv" / name
    assert _convert_file(os.path.join(SCRIPTS, name), out).returncode == 0
    l1, ours_argv = _run_recorded(ours, tmp_path / "ours")
    l2, conv_argv = _run_recorded(out, tmp_path / "conv")
    assert l1 == l2 == "msrun"
    opts = lambda argv: [a for a in argv[:argv.index(next(x for x in argv if x.endswith(".py")))] if a.startswith("--")]
    assert opts(ours_argv) == opts(conv_argv)
    entry = lambda argv: next(x for x in argv if x.endswith(".py"))
    assert entry(ours_argv) == entry(conv_argv)
    flags = lambda argv: [a for a in argv[argv.index(entry(argv)) + 1:] if a.startswith("--")]
    assert flags(ours_argv) == flags(conv_argv)


def test_variable_shared_by_two_launch_lines_is_rewritten_once():
    text = ('D="--nproc_per_node 2 --nnodes 1"\n'
            "torchrun $D pretrain_vlm.py --a\n"
            "torchrun $D posttrain_qwen2vl_dpo.py --b\n")
    out = convert_launch_script(text).text
    assert out == ('D="--local_worker_num 2 --worker_num 2 --log_dir msrun_log --join=True --bind_core=True"\n'
                   "msrun $D pretrain_vlm.py --a --ai-framework mindspore\n"
                   "msrun $D posttrain_qwen2vl_dpo.py --b --ai-framework mindspore\n")
