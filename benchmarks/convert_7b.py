"""Wall time and peak memory of mm-convert on a synthetic checkpoint with the real Qwen2-VL-7B shapes.

    python benchmarks/convert_7b.py            # 7B shapes, bf16 (~16.6 GB written once to a temp dir;
                                               # needs ~50 GB free disk while it runs)
    python benchmarks/convert_7b.py --smoke    # small shapes, same code path (CI)

Runs hf_to_mm (tp1, pp4 = [1,10,10,7] / [32,0,0,0], the 7B example) and mm_to_hf, each in a fresh
subprocess, and reports wall seconds, peak RSS (ru_maxrss: includes file pages of memory-mapped
inputs, which the kernel can drop at will) and peak anonymous RSS (sampled RssAnon: the memory the
conversion really holds). Prints a table, then one JSON line per step.
"""
import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

import ml_dtypes
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHAPES_7B = dict(hidden=3584, heads=28, kv=4, ffn=18944, vocab=152064, layers=28,
                 vit_dim=1280, vit_heads=16, vit_depth=32, pp_llm=[1, 10, 10, 7], pp_vit=[32, 0, 0, 0], shards=5)
SHAPES_SMOKE = dict(hidden=256, heads=8, kv=4, ffn=512, vocab=1024, layers=8,
                    vit_dim=128, vit_heads=4, vit_depth=8, pp_llm=[1, 3, 2, 2], pp_vit=[8, 0, 0, 0], shards=3)


def config(s):
    return {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
            "hidden_size": s["hidden"], "intermediate_size": s["ffn"], "num_hidden_layers": s["layers"],
            "num_attention_heads": s["heads"], "num_key_value_heads": s["kv"], "vocab_size": s["vocab"],
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"depth": s["vit_depth"], "embed_dim": s["vit_dim"], "num_heads": s["vit_heads"],
                              "mlp_ratio": 4, "hidden_size": s["hidden"], "in_channels": 3, "patch_size": 14,
                              "spatial_merge_size": 2, "temporal_patch_size": 2}}


def hf_shapes(s):
    d, vh, m, H = s["vit_dim"], 4 * s["vit_dim"], 4 * s["vit_dim"], s["hidden"]
    hd = H // s["heads"]
    q, kv, I, V = s["heads"] * hd, s["kv"] * hd, s["ffn"], s["vocab"]
    out = {"visual.patch_embed.proj.weight": (d, 3, 2, 14, 14)}
    for i in range(s["vit_depth"]):
        b = f"visual.blocks.{i}."
        out.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                    b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,), b + "attn.proj.weight": (d, d),
                    b + "attn.proj.bias": (d,), b + "mlp.fc1.weight": (vh, d), b + "mlp.fc1.bias": (vh,),
                    b + "mlp.fc2.weight": (d, vh), b + "mlp.fc2.bias": (d,)})
    out.update({"visual.merger.ln_q.weight": (d,), "visual.merger.ln_q.bias": (d,),
                "visual.merger.mlp.0.weight": (m, m), "visual.merger.mlp.0.bias": (m,),
                "visual.merger.mlp.2.weight": (H, m), "visual.merger.mlp.2.bias": (H,),
                "model.embed_tokens.weight": (V, H)})
    for i in range(s["layers"]):
        b = f"model.layers.{i}."
        out.update({b + "input_layernorm.weight": (H,), b + "post_attention_layernorm.weight": (H,),
                    b + "self_attn.q_proj.weight": (q, H), b + "self_attn.q_proj.bias": (q,),
                    b + "self_attn.k_proj.weight": (kv, H), b + "self_attn.k_proj.bias": (kv,),
                    b + "self_attn.v_proj.weight": (kv, H), b + "self_attn.v_proj.bias": (kv,),
                    b + "self_attn.o_proj.weight": (H, q), b + "mlp.gate_proj.weight": (I, H),
                    b + "mlp.up_proj.weight": (I, H), b + "mlp.down_proj.weight": (H, I)})
    out["model.norm.weight"] = (H,)
    out["lm_head.weight"] = (V, H)
    return out


def _write_shard(path, shapes):
    """Stream one synthetic bf16 safetensors shard: header from shapes, then tensor by tensor."""
    header, off = {}, 0
    for n, shp in shapes.items():
        nb = int(np.prod(shp)) * 2
        header[n] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + nb]}
        off += nb
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        block = (np.arange(1 << 20, dtype=np.float32) % 251 * 0.01).astype(ml_dtypes.bfloat16).view(np.uint8)
        for i, (n, shp) in enumerate(shapes.items()):
            # a per-tensor rotation of one pattern block: cheap to write, and a misplaced tensor would
            # not pass the final spot check
            left = int(np.prod(shp)) * 2
            pat = np.roll(block, 2 * (i * 7919 % (1 << 19)))
            while left:
                k = min(left, pat.size)
                f.write(pat[:k])
                left -= k
    return off


def make_synthetic_hf(d, s):
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config(s), f)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        f.write("{}")
    shapes = hf_shapes(s)
    names = list(shapes)
    per = -(-len(names) // s["shards"])
    wm, total = {}, 0
    for k in range(s["shards"]):
        fn = f"model-{k + 1:05d}-of-{s['shards']:05d}.safetensors"
        part = {n: shapes[n] for n in names[k * per:(k + 1) * per]}
        total += _write_shard(os.path.join(d, fn), part)
        wm.update({n: fn for n in part})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f)
    return total


def _child(step, work, s):
    peak_anon = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
            stop.wait(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    from mindspeed_ms.checkpoint.converter import hf_to_mm, mm_to_hf
    t0 = time.perf_counter()
    if step == "hf_to_mm":
        hf_to_mm(os.path.join(work, "hf"), os.path.join(work, "mm"), [s["pp_llm"]], [s["pp_vit"]], 1, progress=False)
    else:
        mm_to_hf(os.path.join(work, "mm"), os.path.join(work, "hf"), os.path.join(work, "back"),
                 s["pp_llm"], s["pp_vit"], 1, progress=False)
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"step": step, "wall_s": round(wall, 2), "peak_rss_mb": round(rss / 1024),
                      "peak_anon_rss_mb": round(peak_anon[0] / 1024)}))


def _dir_bytes(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small shapes (seconds), same code path")
    ap.add_argument("--workdir", default=None, help="where to put the temporary checkpoints (default: $TMPDIR)")
    ap.add_argument("--child", nargs=2, metavar=("STEP", "WORKDIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    s = SHAPES_SMOKE if a.smoke else SHAPES_7B
    if a.child:
        return _child(a.child[0], a.child[1], s)
    work = tempfile.mkdtemp(prefix="convert_7b_", dir=a.workdir)
    try:
        t0 = time.perf_counter()
        total = make_synthetic_hf(os.path.join(work, "hf"), s)
        gen = time.perf_counter() - t0
        rows = []
        for step in ("hf_to_mm", "mm_to_hf"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", step, work] + (["--smoke"] if a.smoke else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["gb_written"] = round(_dir_bytes(os.path.join(work, "mm" if step == "hf_to_mm" else "back")) / 1e9, 2)
            r["gb_per_s"] = round(r["gb_written"] / max(r["wall_s"], 1e-9), 3)
            rows.append(r)
        # spot check: the round trip is bitwise on a few tensors
        from mindspeed_ms.checkpoint.hf_io import HFCheckpoint
        a_, b_ = HFCheckpoint(os.path.join(work, "hf")), HFCheckpoint(os.path.join(work, "back"))
        for n in ("model.layers.3.self_attn.k_proj.weight", "visual.blocks.7.attn.qkv.bias", "lm_head.weight"):
            assert a_.get(n).tobytes() == b_.get(n).tobytes(), n
        label = "smoke shapes" if a.smoke else "Qwen2-VL-7B shapes"
        print(f"\n{label}: {total / 1e9:.2f} GB bf16 in {s['shards']} shards (generated in {gen:.1f}s), "
              f"tp1 pp4 llm {s['pp_llm']} vit {s['pp_vit']}")
        print(f"{'step':<10}{'wall s':>9}{'GB out':>9}{'GB/s':>8}{'peak RSS MB':>13}{'peak anon MB':>14}")
        for r in rows:
            print(f"{r['step']:<10}{r['wall_s']:>9}{r['gb_written']:>9}{r['gb_per_s']:>8}{r['peak_rss_mb']:>13}"
                  f"{r['peak_anon_rss_mb']:>14}")
        for r in rows:
            print(json.dumps(dict(r, shapes="smoke" if a.smoke else "7b", model_gb=round(total / 1e9, 2))))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
