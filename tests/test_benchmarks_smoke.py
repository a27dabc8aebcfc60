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
    rows, out = _run("train_throughput.py", "--config", "tiny", "--smoke", "--no-compile")
    runs = [r for r in rows if not r.get("summary")]
    assert sorted(r["impl"] for r in runs) == ["hf", "ours"]
    assert all(r["step_gflop"] > 0 and r["achieved_gflops"] > 0 for r in runs)
    for r in runs:
        assert TRAIN_KEYS <= set(r), sorted(TRAIN_KEYS - set(r))
        assert r["config"] == "tiny" and r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["compile_s"] >= 0
    summary = [r for r in rows if r.get("summary")]
    assert len(summary) == 1 and summary[0]["same_loss"], summary     # same weights + batch -> same loss
    assert "speed ratio ours/hf" in out
    peak = summary[0]["matmul_peak"]
    assert peak["mindspore_gflops"] > 0 and peak["torch_gflops"] > 0
    assert 0 < summary[0]["ours_fraction_of_peak"] and 0 < summary[0]["hf_fraction_of_peak"]


@pytest.mark.slow
def test_train_throughput_smoke_with_torch_compile():
    """HF + torch.compile (inductor) as the second peer: its first-step loss agrees too."""
    rows, out = _run("train_throughput.py", "--config", "tiny", "--smoke", timeout=1800)
    assert sorted(r["impl"] for r in rows if not r.get("summary")) == ["hf", "hf_compile", "ours"]
    summary = [r for r in rows if r.get("summary")][0]
    assert summary["same_loss"] and summary["hf_compile_compile_s"] >= 0, summary
    assert "faster of HF eager and HF + torch.compile" in out


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


E2E_KEYS = {"impl", "dataset", "packing", "num_workers", "tokens_per_s", "samples_per_s", "step_ms"}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["demo", "longtail"])
def test_train_e2e_smoke(tmp_path, dataset):
    rows, out = _run("train_e2e.py", "--dataset", dataset, "--smoke", "--work", str(tmp_path), timeout=3600)
    runs = [r for r in rows if not r.get("summary")]
    assert sorted((r["impl"], r["packing"], r["num_workers"]) for r in runs) == [
        ("hf", False, 2), ("ours", False, 0), ("ours", False, 2), ("ours", True, 0), ("ours", True, 2)]
    for r in runs:
        assert E2E_KEYS <= set(r) and r["dataset"] == dataset and r["tokens_per_s"] > 0 and r["samples_per_s"] > 0
    plain = [r for r in runs if r["impl"] == "ours" and not r["packing"]]
    assert all(r["samples"] > plain[0]["samples"] for r in runs if r["packing"])   # several samples per row
    summary = [r for r in rows if r.get("summary")][0]
    assert summary["matmul_peak"]["torch_gflops"] > 0 and summary["fraction_of_peak"]["hf"] > 0


def test_step_flops_formula():
    """benchmarks/flops.py: hand count for a one-layer model; a packed row counts its samples'
    attention blocks separately."""
    import sys as _s
    _s.path.insert(0, BENCH)
    from types import SimpleNamespace as NS
    from flops import batch_flops, step_flops
    import numpy as np
    v = NS(hidden_size=4, ffn_hidden_size=8, in_channels=3, temporal_patch_size=2, patch_size=1, spatial_merge_size=2,
           num_layers=1)
    cfg = NS(vision=v, projector=NS(ffn_hidden_size=16), text=NS(hidden_size=8, ffn_hidden_size=16,
             num_attention_heads=2, num_query_groups=1, kv_channels=4, num_layers=1, vocab_size=10))
    vit = 4 * (2 * 6 * 4 + 2 * 4 * 12 + 2 * 16 + 2 * 2 * 32) + 2 * 2 * 16 * 4
    proj = 1 * (2 * 16 * 16 + 2 * 16 * 8)
    llm = 5 * (2 * 8 * 16 + 2 * 8 * 8 + 2 * 8 * 32 + 2 * 16 * 8) + 2 * 2 * 25 * 8
    assert step_flops(cfg, [5], [4], 3) == 3 * (vit + proj + llm + 3 * 2 * 8 * 10)
    unpacked = {"attention_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]]), "loss_weights": np.array([[1, 0, 0, 0]] * 2),
                "image_grid_thw": np.zeros((0, 3))}
    packed = {"attention_mask": np.array([[1, 1, 1, 2, 2]]), "packed_segments": np.array([[1, 1, 1, 2, 2]]),
              "loss_weights": np.array([[1, 0, 0, 1, 0]])}
    assert batch_flops(cfg, unpacked) == batch_flops(cfg, packed) == step_flops(cfg, [3, 2], [], 2)
