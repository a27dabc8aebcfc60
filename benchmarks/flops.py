"""Model FLOPs of a Qwen2-VL training step, and the machine's measured fp32 matmul peak.

    python benchmarks/flops.py --peak [--size 2048]    # one JSON line: MindSpore and torch matmul GFLOP/s

FLOPs count the matrix products a step must do (the "model FLOPs" of MFU), the same formula for
every implementation whatever it actually runs; element-wise work, norms and softmax are left out.
A multiply-add is 2 FLOPs; a training step is 3x the forward pass (backward = 2x: the gradients
w.r.t. the inputs and w.r.t. the weights), all parameters trainable.

Forward, per step (P patches, T merged vision tokens = P / merge^2, rows r of length S_r, L rows
that carry a loss):
- ViT, per patch: patch embedding 2*C*t*p*p*h, and per layer qkv 2*h*3h + out 2*h*h + MLP 2*2*h*f;
  attention per layer and per image frame of n patches: 2*2*n^2*h (q k^T and p v);
- projector, per merged token: 2*(m^2*h)*f_p + 2*f_p*H;
- LLM, per token and layer: qkv 2*H*(a+2g)*d + out 2*a*d*H + SwiGLU 2*H*2F + 2*F*H; attention per
  layer and row 2*2*S_r^2*a*d (the full S x S products, as the matmul path computes them);
- output layer: 2*H*V per row that carries a loss (prompt, image and padding rows predict nothing).
Padding tokens are not counted (a packed and an unpacked batch of the same samples count the same
except for the attention of packed rows, counted per sample: n^2 per block).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_flops(cfg, seq_lengths, patches_per_frame, loss_rows):
    """Training-step FLOPs (3 x forward) for a `Qwen2VLConfig`.

    seq_lengths: real token count of each attention block of the LLM (a row, or a packed sample);
    patches_per_frame: patch count of each image / video frame (each a ViT attention block);
    loss_rows: positions that carry a loss."""
    v, pj, t = cfg.vision, cfg.projector, cfg.text
    h, f = v.hidden_size, v.ffn_hidden_size
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    P = int(sum(patches_per_frame))
    m2 = v.spatial_merge_size ** 2
    vit = P * (2 * patch_dim * h + v.num_layers * (2 * h * 3 * h + 2 * h * h + 2 * 2 * h * f))
    vit += v.num_layers * sum(2 * 2 * n * n * h for n in patches_per_frame)
    proj = (P // m2) * (2 * (m2 * h) * pj.ffn_hidden_size + 2 * pj.ffn_hidden_size * t.hidden_size)
    H, F, a, g, d = t.hidden_size, t.ffn_hidden_size, t.num_attention_heads, t.num_query_groups, t.kv_channels
    tokens = int(sum(seq_lengths))
    llm = tokens * t.num_layers * (2 * H * (a + 2 * g) * d + 2 * a * d * H + 2 * H * 2 * F + 2 * F * H)
    llm += t.num_layers * sum(2 * 2 * s * s * a * d for s in seq_lengths)
    out = int(loss_rows) * 2 * H * t.vocab_size
    return 3 * (vit + proj + llm + out)


def batch_flops(cfg, batch):
    """`step_flops` of one collated micro-batch (our batch contract, numpy)."""
    seg = batch.get("packed_segments")
    blocks = []
    mask = np.asarray(batch["attention_mask"])
    for r in range(mask.shape[0]):
        row = seg[r] if seg is not None else (mask[r] > 0).astype(np.int64)
        blocks += [int((row == k).sum()) for k in range(1, int(row.max(initial=0)) + 1)]
    frames = []
    for key in ("image_grid_thw", "video_grid_thw"):
        for tt, hh, ww in np.asarray(batch.get(key, np.zeros((0, 3)))).reshape(-1, 3).tolist():
            frames += [int(hh * ww)] * int(tt)
    rows = int(np.count_nonzero(np.asarray(batch["loss_weights"])))
    return step_flops(cfg, blocks, frames, rows)


def matmul_peak(size=2048, repeats=10):
    """GFLOP/s of a size x size fp32 matmul: MindSpore (PYNATIVE, its CPU MatMul kernel) and torch,
    best of `repeats` after a warm-up each."""
    out = {"size": size}
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    flop = 2.0 * size ** 3
    import mindspore as ms
    from mindspore import ops
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = ms.Tensor(a)
    ops.matmul(x, x).asnumpy()
    best = min(_timed(lambda: ops.matmul(x, x).asnumpy()) for _ in range(repeats))
    out["mindspore_gflops"] = round(flop / best / 1e9, 1)
    import torch
    y = torch.from_numpy(a)
    torch.mm(y, y)
    best = min(_timed(lambda: torch.mm(y, y)) for _ in range(repeats))
    out["torch_gflops"] = round(flop / best / 1e9, 1)
    out["torch_threads"] = torch.get_num_threads()
    return out


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peak", action="store_true", help="measure the fp32 matmul peak (MindSpore and torch)")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    if a.peak:
        print(json.dumps({"matmul_peak": True, **matmul_peak(a.size, a.repeats)}), flush=True)
        return 0
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
