"""The README's main job end to end (slow): run_tiny_demo.sh on a copy of the repository, and the
blank-image control run. Learning must be real: held-out colour accuracy from chance to >= 0.9,
while the same training on all-grey images stays near chance on the image questions."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EVERYWHERE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", "msrun_log")
# the runs' own folders, at the top only (mindspeed_ms/data and training/save_dir.py are code)
_TOP = shutil.ignore_patterns("ckpt", "data", "runs", "logs", "save_dir*")


def SKIP(path, names):
    top = set(_TOP(path, names)) if os.path.samefile(path, ROOT) else set()
    return top | set(_EVERYWHERE(path, names))


def _run_demo(tmp_path, run_name, **env):
    repo = tmp_path / "repo"
    if not repo.exists():
        shutil.copytree(ROOT, repo, ignore=SKIP)
    run_dir = repo / "runs" / run_name
    e = dict(os.environ, PYTHON=sys.executable, RUN_DIR=str(run_dir), MASTER_PORT=str(6200 + len(run_name)), **env)
    # the copy's code and commands, as `source auto_convert.sh mm` in the copy would set them
    e["PYTHONPATH"] = str(repo)
    e["PATH"] = f"{repo / 'bin'}:{e.get('PATH', '')}"
    t0 = time.time()
    res = subprocess.run(["bash", "examples/mindspore/qwen2vl/run_tiny_demo.sh"], cwd=repo, env=e,
                         capture_output=True, text=True, timeout=1800)
    seconds = time.time() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    with open(run_dir / "report.json") as f:
        return json.load(f), seconds, res.stdout


@pytest.mark.slow
def test_tiny_demo_learns_from_the_images(tmp_path):
    report, seconds, out = _run_demo(tmp_path, "demo")
    for key in ("steps", "seconds", "tokens_per_s", "loss_first", "loss_last", "accuracy_before", "accuracy_after"):
        assert key in report, key
    assert seconds < 15 * 60, f"the main job took {seconds:.0f}s"
    assert report["loss_last"] < report["loss_first"]
    assert report["accuracy_before"]["colour"] <= report["chance"]["colour"] + 0.1
    assert report["accuracy_after"]["colour"] >= 0.9, report
    assert report["chat"]["same"] and report["chat"]["mm_checkpoint"]
    assert "question type" in out and os.path.isfile(os.path.join(tmp_path, "repo", report["loss_curve_png"]))

    # control: identical run on all-grey images; the image questions stay near chance
    control, _, _ = _run_demo(tmp_path, "control", BLANK="1")
    assert control["accuracy_after"]["colour"] <= control["chance"]["colour"] + 0.15, control
    assert control["accuracy_after"]["colour"] < report["accuracy_after"]["colour"] - 0.5
