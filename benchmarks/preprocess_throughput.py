"""Image preprocessing throughput: our Qwen2VLImageProcessor vs transformers' on the same images.

    python benchmarks/preprocess_throughput.py [--num-images 200] [--repeats 3] [--smoke] [--max-pixels N]
        [--num-threads N] [--sequential]

Both processors get the same varied RGB images (sizes 10x10 .. 2000x1500, odd aspect ratios) in one
run, one image per call (one warm-up image first). By default each image goes through both processors
back to back and the outputs are compared and dropped (`--sequential`: each processor over the whole
set in turn, all outputs held). `seconds` is the sum of each processor's call times. Prints a table
and JSON lines (one per processor, one summary with the speed ratio, the max abs difference of the
outputs and `identical`: equal grids and max |diff| exactly 0). The whole comparison runs `--repeats` times on the
same images; the summary gives the median speedup and the spread of the repeats (a shared machine's
slow phases move single runs by ~10%). `--smoke` runs 5 images once (CI).
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
from PIL import Image


def make_images(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(10, 10), (2000, 1500), (1500, 2000), (640, 480), (3000, 40), (28, 28)]
    out = []
    for i in range(n):
        w, h = sizes[i] if i < len(sizes) else (int(rng.integers(16, 1600)), int(rng.integers(16, 1200)))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        a = np.stack([127 + 120 * np.sin(x / w * rng.uniform(1, 6)), 127 + 120 * np.cos(y / h * rng.uniform(1, 6)),
                      255 * (x + y) / (w + h)], -1) + rng.normal(0, 10, (h, w, 3))
        out.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return out


def check(a, b):
    """(grids equal, max |diff| of pixel_values, patches) of one image's two outputs."""
    same_shape = a["pixel_values"].shape == b["pixel_values"].shape
    diff = float(np.abs(a["pixel_values"] - b["pixel_values"]).max()) if same_shape else float("inf")
    return bool(np.array_equal(a["image_grid_thw"], b["image_grid_thw"])), diff, int(a["pixel_values"].shape[0])


def run_interleaved(procs, images):
    """Each image goes through both processors back to back (order alternating per image), each call
    timed on its own; the outputs are compared at once and dropped. Load from other processes on a
    shared machine then hits both processors alike, and no output is held."""
    for proc, kw in procs:
        proc(images=images[:1], **kw)  # warm-up
    times, checks = [0.0] * len(procs), []
    for i, im in enumerate(images):
        res = [None] * len(procs)
        for j in (range(len(procs)) if i % 2 == 0 else reversed(range(len(procs)))):
            proc, kw = procs[j]
            t0 = time.perf_counter()
            res[j] = proc(images=[im], **kw)
            times[j] += time.perf_counter() - t0
        checks.append(check(*res))
    return times, checks


def run_sequential(procs, images):
    """The first method: each processor over the whole set in turn, holding every output to the end.
    The ~2 GB of fresh outputs per processor add the OS's first-touch page-fault cost to both timings."""
    times, outs = [], []
    for proc, kw in procs:
        proc(images=images[:1], **kw)  # warm-up
        t0 = time.perf_counter()
        outs.append([proc(images=[im], **kw) for im in images])
        times.append(time.perf_counter() - t0)
    return times, [check(a, b) for a, b in zip(*outs)]


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number of at least 1")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=positive_int, default=200)
    p.add_argument("--repeats", type=positive_int, default=3, help="whole comparisons run; the summary is their median")
    p.add_argument("--smoke", action="store_true", help="5 images, one repeat (quick CI check)")
    p.add_argument("--max-pixels", type=positive_int, default=1003520, help="processor max_pixels (default 1280*28*28)")
    p.add_argument("--min-pixels", type=positive_int, default=3136)
    p.add_argument("--num-threads", type=positive_int, default=None,
                   help="threads our processor may use for one large image (default: its own default, 1)")
    p.add_argument("--sequential", action="store_true",
                   help="time each processor over the whole set in turn, holding all outputs (the first method)")
    args = p.parse_args(argv)
    n = 5 if args.smoke else args.num_images
    from transformers import Qwen2VLImageProcessor as HFProcessor

    from mindspeed_ms.data import Qwen2VLImageProcessor

    images = make_images(n)
    limits = dict(min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    procs = [(Qwen2VLImageProcessor(num_threads=args.num_threads, **limits), {}),
             (HFProcessor(**limits), dict(return_tensors="np", input_data_format="channels_last"))]
    run = run_sequential if args.sequential else run_interleaved
    repeats, checks = [], []
    for _ in range(1 if args.smoke else args.repeats):
        (t_ours, t_hf), res = run(procs, images)
        repeats.append((t_ours, t_hf))
        checks += res
    grids_equal = all(c[0] for c in checks)
    diff = max(c[1] for c in checks)
    patches = sum(c[2] for c in checks) // len(repeats)
    speedups = sorted(t_hf / t_ours for t_ours, t_hf in repeats)
    speedup = statistics.median(speedups)
    t_ours, t_hf = (statistics.median(t[i] for t in repeats) for i in (0, 1))
    rows = [{"processor": name, "images": n, "seconds": round(t, 4), "images_per_s": round(n / t, 2),
             "seconds_by_repeat": [round(r[i], 4) for r in repeats]}
            for i, (name, t) in enumerate((("mindspeed_ms", t_ours), ("transformers", t_hf)))]
    summary = {"summary": True, "images": n, "repeats": len(repeats), "num_threads": procs[0][0].num_threads,
               "patches": patches, "speedup": round(speedup, 2), "speedup_by_repeat": [round(x, 2) for x in speedups],
               "spread": round((speedups[-1] - speedups[0]) / speedup, 3),
               "max_abs_diff": diff, "grids_equal": grids_equal, "identical": grids_equal and diff == 0.0,
               "method": "sequential" if args.sequential else "interleaved"}
    print(f"{'processor':<14}{'images':>8}{'seconds':>10}{'images/s':>10}   (medians of {len(repeats)} repeat(s))")
    for r in rows:
        print(f"{r['processor']:<14}{r['images']:>8}{r['seconds']:>10.3f}{r['images_per_s']:>10.1f}")
    print(f"speedup x{summary['speedup']} (repeats: {', '.join(f'x{x:.2f}' for x in speedups)})  "
          f"max|diff| {diff:.2e}  grids equal: {grids_equal}")
    for r in rows + [summary]:
        print(json.dumps(r))
    return 0 if summary["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
