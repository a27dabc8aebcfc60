"""Every benchmark's --smoke runs and prints well-formed JSON lines (no timing assertions); where a
benchmark compares outputs (same first-step loss, identical preprocessed pixels, bitwise convert
round trip), that comparison must hold."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
TRAIN_KEYS = {"impl", "config", "tokens_per_s", "step_ms", "peak_rss_mb", "compile_s"}


def _run(script, *args, timeout=900):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"{script} {args} exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"{script} printed no JSON lines:\n{proc.stdout[-2000:]}"
    return rows, proc.stdout


def test_train_throughput_smoke_tiny():
    rows, out = _run("train_throughput.py", "--config", "tiny", "--smoke")
    runs = [r for r in rows if not r.get("summary")]
    assert sorted(r["impl"] for r in runs) == ["hf", "ours"]
    for r in runs:
        assert TRAIN_KEYS <= set(r), sorted(TRAIN_KEYS - set(r))
        assert r["config"] == "tiny" and r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["compile_s"] >= 0
    summary = [r for r in rows if r.get("summary")]
    assert len(summary) == 1 and summary[0]["same_loss"], summary     # same weights + batch -> same loss
    assert "speed ratio ours/hf" in out


@pytest.mark.slow
def test_train_memory_smoke_seq1024():
    rows, _ = _run("train_throughput.py", "--seq-length", "1024", "--smoke", timeout=1800)
    runs = [r for r in rows if not r.get("summary")]
    assert sorted(r["chunked_loss"] for r in runs) == [False, True]
    assert all(r["seq_length"] == 1024 and r["peak_rss_mb"] > 0 for r in runs)
    summary = [r for r in rows if r.get("summary")][0]
    assert summary["same_loss"], summary


def test_preprocess_smoke_outputs_identical():
    rows, _ = _run("preprocess_throughput.py", "--smoke")
    per = [r for r in rows if "processor" in r]
    assert {r["processor"] for r in per} == {"mindspeed_ms", "transformers"}
    assert all(r["images_per_s"] > 0 for r in per)
    summary = [r for r in rows if r.get("summary")][0]
    assert summary["identical"] and summary["grids_equal"], summary


def test_convert_7b_smoke():
    rows, _ = _run("convert_7b.py", "--smoke")   # asserts the bitwise round trip itself
    assert [r["step"] for r in rows] == ["hf_to_mm", "mm_to_hf"]
    for r in rows:
        assert r["shapes"] == "smoke" and r["wall_s"] >= 0 and r["peak_rss_mb"] > 0 and r["gb_written"] > 0


def test_run_all_writes_report(tmp_path):
    out = tmp_path / "RESULTS.md"
    _run("run_all.py", "--smoke", "--only", "preprocess", "--out", str(out))
    text = out.read_text()
    for needle in ("# Benchmark results", "- machine:", "- versions:", "mindspore", "## preprocess", '"summary": true'):
        assert needle in text, needle
