"""End-to-end training throughput on real data: ours (packing on/off, --num-workers 0/N) vs HF
transformers + torch eager fed by a standard PyTorch DataLoader.

    python benchmarks/train_e2e.py --dataset demo     [--rounds 3 --steps 8 --warmup 2 --num-workers 2]
    python benchmarks/train_e2e.py --dataset longtail [--smoke]

One JSON line per measured run: impl ("ours" / "hf"), dataset, packing, num_workers, tokens_per_s
(real, unpadded tokens trained per second), samples_per_s, step_ms (wall time per step, data
loading included), achieved_gflops (benchmarks/flops.py's model FLOPs of the steps / their time),
and for ours prebuilt_step_ms: the same batches trained again from memory (the step without any
data loading, so step_ms / prebuilt_step_ms is what loading still costs). A final summary line gives
medians over the rounds, the ratios and the machine's matmul peak.

Datasets (built once under --work, default benchmarks/.e2e_work; the tiny model, its real 151,936
vocabulary and the same random weights on both sides):
- demo: the tiny demo's picture questions (`make_demo_dataset`, 56..140 px pictures, short text);
- longtail: synthetic, 1-4 pictures of 56..448 px sides per sample and 20-900 text tokens, a long
  tail of lengths (most samples short).
Both sides train the same preprocessed samples (our token ids and labels; the HF side computes the
pixels with transformers' `Qwen2VLImageProcessor` in its DataLoader workers, pads each batch to
its longest sample, a multiple of 8, as `DataCollatorForSeq2Seq`), micro-batch --micro-batch-size,
one micro-batch per step, AdamW and clip 1.0; each run is a fresh process, the configurations
rotate from round to round.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
TINY_JSON = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json")
SETTINGS = {  # dataset -> (seq_length, image_max_pixels)
    "demo": (512, 12544),
    "longtail": (2048, 448 * 448),
}
WORDS = ("red green blue small large left right circle square picture shows there is a the of and with "
         "near far under over between colour shape many few bright dark light corner centre edge line").split()


# ---------------------------------------------------------------------------------------------- data
def build_work(work, dataset, n_train):
    """The tiny HF checkpoint (tokenizer) and the dataset under `work`; returns the data.json path."""
    os.makedirs(work, exist_ok=True)
    hf = os.path.join(work, "hf")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        subprocess.run([sys.executable, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", hf], check=True,
                       cwd=ROOT, env=_env(), capture_output=True)
    data = os.path.join(work, f"{dataset}_{n_train}")
    if not os.path.isfile(os.path.join(data, "train.json")):
        if dataset == "demo":
            subprocess.run([sys.executable, "-m", "mindspeed_ms.tools.make_demo_dataset", data, "--train",
                            str(n_train), "--val", "8", "--no-llava"], check=True, cwd=ROOT, env=_env(),
                           capture_output=True)
        else:
            write_longtail(data, n_train)
    return hf, data


def write_longtail(out, n, seed=0):
    """1-4 noisy pictures (56..448 px sides) and 20-900 words of text per sample, lengths long-tailed."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        paths = []
        for j in range(k):
            w, h = (int(x) for x in rng.integers(56, 449, 2))
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            paths.append(f"images/{i:05d}_{j}.png")
            img.save(os.path.join(out, paths[-1]))
        n_words = int(min(900, 20 + rng.exponential(150)))
        words = rng.choice(WORDS, n_words)
        cut = max(1, n_words * 3 // 4)
        rows.append({"images": paths, "messages": [
            {"role": "user", "content": "<image>" * k + " ".join(words[:cut])},
            {"role": "assistant", "content": " ".join(words[cut:]) or "yes"}]})
    with open(os.path.join(out, "train.json"), "w") as f:
        json.dump(rows, f)


def write_data_json(work, hf, data, dataset, packing):
    cfg = json.load(open(os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "data_tiny.json")))
    b, pp = cfg["dataset_param"]["basic_parameters"], cfg["dataset_param"]["preprocess_parameters"]
    b.update(dataset=os.path.join(data, "train.json"), dataset_dir=data, cache_dir=os.path.join(data, "cache"),
             neat_packing=bool(packing))
    b.pop("val_dataset", None)
    pp.update(model_name_or_path=hf, image_max_pixels=SETTINGS[dataset][1])
    path = os.path.join(work, f"data_{dataset}_{int(packing)}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


# ---------------------------------------------------------------------------------------------- workers
def count(batch):
    from mindspeed_ms.training.loss_weights import count_samples
    tokens = int(np.count_nonzero(batch["attention_mask"]))
    seg = batch.get("packed_segments")
    return tokens, count_samples(seg) if seg is not None else int(batch["input_ids"].shape[0])


def worker_ours(a):
    from flops import batch_flops
    from mindspeed_ms.arguments import parse_args, validate_args
    from mindspeed_ms.training.build import build_feed, build_model, init_runtime
    from mindspeed_ms.training.train_log import TrainLogger
    from mindspeed_ms.training.trainer import Trainer, load_model_state
    from train_throughput import weights

    hf, data = build_work(a.work, a.dataset, a.n_train)
    path = write_data_json(a.work, hf, data, a.dataset, a.packing)
    args = parse_args(["--mm-model", TINY_JSON, "--mm-data", path, "--lr", "1e-5", "--train-iters", "100000",
                       "--seq-length", str(SETTINGS[a.dataset][0]), "--micro-batch-size", str(a.micro_batch_size),
                       "--global-batch-size", str(a.micro_batch_size), "--clip-grad", "1.0", "--weight-decay", "0.01",
                       "--num-workers", str(a.num_workers), "--seed", "1234"])
    startup = validate_args(args, 1, "CPU")
    logger = TrainLogger(args.train_iters, False)
    feed = build_feed(args, startup, 0)
    init_runtime(args, "CPU", 1, logger)
    model = build_model(startup.model, args, "CPU")
    trainer = Trainer(args, startup, 0, 1, logger, model, feed)
    load_model_state(trainer.named_params, weights(startup.model), "benchmark weights")
    for _ in range(a.warmup):
        trainer.train_step(feed.next_step())
    seen, tokens, samples, flop = [], 0, 0, 0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        batches = feed.next_step()
        seen.append([dict(b) for b in batches])
        for b in batches:
            t, s = count(b)
            tokens, samples = tokens + t, samples + s
        trainer.train_step(batches)
        flop += sum(batch_flops(startup.model, b) for b in batches)
    wall = time.perf_counter() - t0
    feed.close()
    t1 = time.perf_counter()
    for batches in seen:                       # the same batches again, from memory
        trainer.train_step(batches)
    prebuilt = time.perf_counter() - t1
    return {"step_ms": round(wall / a.steps * 1000, 1), "prebuilt_step_ms": round(prebuilt / a.steps * 1000, 1),
            "tokens_per_s": round(tokens / wall, 1), "samples_per_s": round(samples / wall, 3),
            "achieved_gflops": round(flop / wall / 1e9, 2), "tokens": tokens, "samples": samples}


class HFSamples:
    """torch Dataset over our preprocessed rows; pixels by transformers' image processor."""

    def __init__(self, rows, cfg, max_pixels):
        self.rows, self.cfg, self.max_pixels, self.proc = rows, cfg, max_pixels, None

    def __len__(self):
        return len(self.rows)

    def start(self, _worker_id=None):
        """Import transformers and build the processor (a DataLoader worker's `worker_init_fn`)."""
        from transformers import Qwen2VLImageProcessor
        if self.proc is None:
            self.proc = Qwen2VLImageProcessor()

    def __getitem__(self, i):
        from mindspeed_ms.data.image_io import load_image, pre_resize
        self.start()
        row = self.rows[int(i)]
        out = {"input_ids": row["input_ids"], "labels": row["labels"]}
        if row["images"]:
            pp = self.cfg.preprocess_parameters
            imgs = [pre_resize(load_image(p), pp.image_max_pixels, pp.image_min_pixels) for p in row["images"]]
            r = self.proc(images=imgs, return_tensors="np")
            out.update(pixel_values=r["pixel_values"], image_grid_thw=r["image_grid_thw"])
        return out


def pad_collate(features):
    """DataCollatorForSeq2Seq-style: pad to the longest, a multiple of 8, labels -100."""
    import torch
    n = max(len(f["input_ids"]) for f in features)
    n = -(-n // 8) * 8
    ids = torch.full((len(features), n), 151643, dtype=torch.long)
    labels = torch.full((len(features), n), -100, dtype=torch.long)
    mask = torch.zeros((len(features), n), dtype=torch.long)
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    with_px = [f for f in features if "pixel_values" in f]
    if with_px:
        out["pixel_values"] = torch.from_numpy(np.concatenate([f["pixel_values"] for f in with_px]))
        out["image_grid_thw"] = torch.from_numpy(np.concatenate([f["image_grid_thw"] for f in with_px]))
    return out


def worker_hf(a):
    import torch
    from flops import step_flops
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.data.dataset import build_datasets
    from mindspeed_ms.data.sampler import EpochOrder
    from train_throughput import build_hf

    hf, data = build_work(a.work, a.dataset, a.n_train)
    cfg = load_data_json(write_data_json(a.work, hf, data, a.dataset, False))
    train, _ = build_datasets(cfg, SETTINGS[a.dataset][0], seed=1234)
    mcfg = load_model_json(TINY_JSON)
    model, opt, params = build_hf(mcfg)
    order = np.concatenate([EpochOrder(len(train), 1234, True)(e) for e in range(4)]).tolist()
    samples = HFSamples(train.rows, cfg, SETTINGS[a.dataset][1])
    loader = torch.utils.data.DataLoader(samples, a.micro_batch_size, sampler=order, num_workers=a.num_workers,
                                         collate_fn=pad_collate, drop_last=True, worker_init_fn=samples.start,
                                         persistent_workers=a.num_workers > 0)
    it = iter(loader)

    def step():
        b = next(it)
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lens = b["attention_mask"].sum(1).tolist()
        frames = [int(h * w) for _, h, w in b.get("image_grid_thw", torch.zeros((0, 3))).tolist()]
        rows = int((b["labels"][:, 1:] != -100).sum())
        return int(sum(lens)), len(lens), step_flops(mcfg, lens, frames, rows)

    # every worker process has started (imported transformers) and delivered a batch before timing
    for _ in range(max(a.warmup, a.num_workers + 1)):
        step()
    tokens = samples = flop = 0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        t, s, f = step()
        tokens, samples, flop = tokens + t, samples + s, flop + f
    wall = time.perf_counter() - t0
    return {"step_ms": round(wall / a.steps * 1000, 1), "tokens_per_s": round(tokens / wall, 1),
            "samples_per_s": round(samples / wall, 3), "achieved_gflops": round(flop / wall / 1e9, 2),
            "tokens": tokens, "samples": samples}


def worker_main(a):
    res = worker_ours(a) if a.worker == "ours" else worker_hf(a)
    res.update(impl=a.worker, dataset=a.dataset, packing=bool(a.packing), num_workers=a.num_workers,
               micro_batch_size=a.micro_batch_size, steps=a.steps)
    print("RESULT " + json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------- driver
def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")


def run(a, impl, packing, workers):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--dataset", a.dataset, "--steps",
           str(a.steps), "--warmup", str(a.warmup), "--work", a.work, "--n-train", str(a.n_train),
           "--micro-batch-size", str(a.micro_batch_size), "--num-workers", str(workers)]
    if packing:
        cmd.append("--packing")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{impl} worker failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=tuple(SETTINGS), default="demo")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per run (the first compiles)")
    p.add_argument("--num-workers", type=int, default=2, help="N of the workers-on runs (both sides)")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--n-train", type=int, default=400, help="samples in the dataset")
    p.add_argument("--work", default=os.path.join(HERE, ".e2e_work"), help="where the datasets are built")
    p.add_argument("--smoke", action="store_true", help="one run per configuration, 1 warm-up + 2 steps (CI)")
    p.add_argument("--worker", choices=("ours", "hf"), help=argparse.SUPPRESS)
    p.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_main(a)
        return 0
    if a.smoke:
        a.rounds, a.steps, a.warmup, a.n_train = 1, 2, 1, 48
    a.work = os.path.abspath(a.work)
    build_work(a.work, a.dataset, a.n_train)
    n = a.num_workers
    configs = [("ours", False, 0), ("ours", False, n), ("ours", True, 0), ("ours", True, n), ("hf", False, n)]
    runs = {c: [] for c in configs}
    for r in range(a.rounds):
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            res = run(a, *c)
            res["round"] = r
            runs[c].append(res)
            print(json.dumps(res), flush=True)
    from train_throughput import matmul_peak_worker
    peak = matmul_peak_worker()
    med = {c: {k: statistics.median(x[k] for x in v) for k in ("tokens_per_s", "samples_per_s", "step_ms",
                                                               "achieved_gflops")} for c, v in runs.items()}
    best = max(configs[:4], key=lambda c: med[c]["tokens_per_s"])
    hf = med[configs[4]]
    summary = {"summary": True, "dataset": a.dataset, "rounds": a.rounds, "steps_per_run": a.steps,
               "num_workers": n, "best_ours": {"packing": best[1], "num_workers": best[2], **med[best]},
               "hf": hf, "ratio_tokens_best_ours_over_hf": round(med[best]["tokens_per_s"] / hf["tokens_per_s"], 3),
               "packing_gain_tokens": round(med[("ours", True, n)]["tokens_per_s"]
                                            / med[("ours", False, n)]["tokens_per_s"], 3),
               "workers_step_over_prebuilt": round(statistics.median(
                   x["step_ms"] / x["prebuilt_step_ms"] for x in runs[("ours", True, n)]), 3),
               "matmul_peak": peak}
    top = max(peak["mindspore_gflops"], peak["torch_gflops"])
    summary["fraction_of_peak"] = {"ours_best": round(med[best]["achieved_gflops"] / top, 4),
                                   "hf": round(hf["achieved_gflops"] / top, 4)}
    for c in configs:
        print(f"{c[0]:<5} packing={str(c[1]):<5} workers={c[2]}: {med[c]['tokens_per_s']:>9.1f} tokens/s "
              f"{med[c]['samples_per_s']:>7.2f} samples/s {med[c]['step_ms']:>9.1f} ms/step "
              f"{med[c]['achieved_gflops']:>7.2f} GFLOP/s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
