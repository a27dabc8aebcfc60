"""Image preprocessing throughput: our Qwen2VLImageProcessor vs transformers' on the same images.

    python benchmarks/preprocess_throughput.py [--num-images 200] [--smoke] [--max-pixels N]

Both processors get the same varied RGB images (sizes 10x10 .. 2000x1500, odd aspect ratios) in one
run; each is timed over the whole set (one warm-up image first). Prints a table and JSON lines
(one per processor, one summary with the speed ratio and the max abs difference of the outputs).
`--smoke` runs 5 images (CI).
"""
import argparse
import json
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


def run(proc, images, **kw):
    proc(images=images[:1], **kw)  # warm-up
    t0 = time.perf_counter()
    outs = [proc(images=[im], **kw) for im in images]
    return time.perf_counter() - t0, outs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--smoke", action="store_true", help="5 images (quick CI check)")
    p.add_argument("--max-pixels", type=int, default=1003520, help="processor max_pixels (default 1280*28*28)")
    p.add_argument("--min-pixels", type=int, default=3136)
    args = p.parse_args(argv)
    n = 5 if args.smoke else args.num_images
    from transformers import Qwen2VLImageProcessor as HFProcessor

    from mindspeed_ms.data import Qwen2VLImageProcessor

    images = make_images(n)
    limits = dict(min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    t_ours, ours = run(Qwen2VLImageProcessor(**limits), images)
    t_hf, ref = run(HFProcessor(**limits), images, return_tensors="np", input_data_format="channels_last")
    diff, grids_equal = 0.0, True
    for a, b in zip(ours, ref):
        grids_equal &= bool(np.array_equal(a["image_grid_thw"], b["image_grid_thw"]))
        diff = max(diff, float(np.abs(a["pixel_values"] - b["pixel_values"]).max()))
    patches = sum(int(o["pixel_values"].shape[0]) for o in ours)
    rows = [{"processor": "mindspeed_ms", "images": n, "seconds": round(t_ours, 4), "images_per_s": round(n / t_ours, 2)},
            {"processor": "transformers", "images": n, "seconds": round(t_hf, 4), "images_per_s": round(n / t_hf, 2)}]
    summary = {"summary": True, "images": n, "patches": patches, "speedup": round(t_hf / t_ours, 2),
               "max_abs_diff": diff, "grids_equal": grids_equal, "identical": grids_equal and diff <= 1e-5}
    print(f"{'processor':<14}{'images':>8}{'seconds':>10}{'images/s':>10}")
    for r in rows:
        print(f"{r['processor']:<14}{r['images']:>8}{r['seconds']:>10.3f}{r['images_per_s']:>10.1f}")
    print(f"speedup x{summary['speedup']}  max|diff| {diff:.2e}  grids equal: {grids_equal}")
    for r in rows + [summary]:
        print(json.dumps(r))
    return 0 if summary["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
