"""Training throughput: our compiled training step vs HF transformers + torch.optim.AdamW (eager).

    python benchmarks/train_throughput.py --config small [--rounds 3] [--steps 4] [--warmup 2]
    python benchmarks/train_throughput.py --config tiny --smoke        # one short run of each (CI)
    python benchmarks/train_throughput.py --seq-length 1024            # peak memory, chunked loss on/off

Both sides get the same Qwen2-VL config (model.json for us, its `config_to_hf` for transformers), the
same random weights (converted by our mm<->hf name mapping), the same batch (images + text, the same
token count, answer-only labels) and train in fp32 with AdamW, gradient clipping 1.0 and Megatron's
weight-decay groups. Ours is the code path of `pretrain_vlm.py`: `init_runtime`, `build_model` and
`Trainer.train_step` (GRAPH mode, dynamic shapes; one micro-batch per step, so the whole step is one
`TrainStep` graph, and the output layer + loss run on the labelled rows only). Theirs:
`Qwen2VLForConditionalGeneration`
(default SDPA attention), `loss.backward()`, `clip_grad_norm_`, `AdamW.step()`.

Each measurement is a fresh subprocess; the two implementations alternate A B A B ... for `--rounds`
rounds so slow phases of a shared machine hit both. Per run: `--warmup` steps (the first one includes
graph compilation), then `--steps` timed steps. Reported per run: median step time, tokens/s, peak RSS
(ru_maxrss of the worker), compile_s (first step minus the median step) and the loss of the first
step (both sides must agree: same weights, same batch). The summary takes the median over runs and
the spread (max-min)/median of the run medians.

Configs (`--config`):
- tiny:  examples/mindspore/qwen2vl/model_tiny.json (LLM 64 x 2, ViT 64 x 2, real 151,936 vocab);
         batch 2 x (one 112x112 image = 16 tokens + 48 text tokens) = 2 x 64 tokens.
- small: LLM 512 x 4 layers (8 heads, 2 kv groups, ffn 1408, tied), ViT 256 x 4 layers (4 heads),
         real vocab; batch 2 x (two 224x224 images = 2 x 64 tokens + 512 text tokens) = 2 x 640 tokens.
Half of each sample's text tokens (the answer) carry labels.

`--seq-length N` (memory mode): the small config, one sample of N tokens (two 224x224 images + text);
runs ours with the chunked output-layer + cross-entropy (the default: fused chunks over the labelled
rows) and with the plain full-logits loss (`chunked_loss = False`: logits [N x V], LogSoftmax,
autodiff), alternated, and reports the peak RSS of each run and the reduction, both over the whole
run (what a training run needs: the full-logits path's peak still grows in steps 2 and 3 as the
memory pool places its larger buffers) and after the first step alone.
"""
import argparse
import copy
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TINY_JSON = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json")

IMG_PAD, VISION_START, VISION_END = 151655, 151652, 151653
SPECIAL_FLOOR = 151643          # ids >= this are special tokens; random text stays below


def model_json(config):
    cfg = json.load(open(TINY_JSON))
    if config == "small":
        cfg = copy.deepcopy(cfg)
        vit, proj, llm = (cfg["image_encoder"]["vision_encoder"], cfg["image_encoder"]["vision_projector"],
                          cfg["text_decoder"])
        vit.update(num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=4, llm_hidden_size=512,
                   pipeline_num_layers=[4])
        proj.update(input_size=256, hidden_size=512, ffn_hidden_size=1024)
        llm.update(num_layers=4, hidden_size=512, ffn_hidden_size=1408, num_attention_heads=8, num_query_groups=2,
                   mrope_section=[8, 12, 12], pipeline_num_layers=[4])
    return cfg


def batch_spec(config, seq_length=None):
    """(samples, images per sample, image side in pixels, text tokens per sample)."""
    if config == "tiny":
        return 2, 1, 112, 48
    if seq_length is None:
        return 2, 2, 224, 512
    return 1, 2, 224, seq_length - 2 * 64       # memory mode: one sample of seq_length tokens


def make_batch(config, seq_length=None, seed=0):
    """HF-style inputs (numpy): input_ids, attention_mask, labels, pixel_values, image_grid_thw."""
    n, n_img, side, n_text = batch_spec(config, seq_length)
    rng = np.random.default_rng(seed)
    grid = side // 14
    per_img_tokens = grid * grid // 4
    rows, labels = [], []
    for _ in range(n):
        ids, lab = [], []
        text = rng.integers(0, SPECIAL_FLOOR, size=n_text - 2 * n_img)
        prompt_len = (n_text - 2 * n_img) // 2
        for _ in range(n_img):
            ids += [VISION_START] + [IMG_PAD] * per_img_tokens + [VISION_END]
        ids += list(text)
        lab = [-100] * (len(ids) - len(text) + prompt_len) + list(text[prompt_len:])
        rows.append(ids)
        labels.append(lab)
    ids = np.array(rows, np.int64)
    pixels = rng.standard_normal((n * n_img * grid * grid, 3 * 2 * 14 * 14)).astype(np.float32)
    grids = np.array([[1, grid, grid]] * (n * n_img), np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": np.array(labels, np.int64),
            "pixel_values": pixels, "image_grid_thw": grids}


def bench_flops(config, seq_length=None):
    """Model FLOPs of one training step on the benchmark batch (benchmarks/flops.py's formula)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from flops import step_flops
    from mindspeed_ms.config.model_config import model_config_from_dict
    b = make_batch(config, seq_length)
    rows = int(((b["labels"][:, 1:] != -100)).sum())
    frames = [int(h * w) for _, h, w in b["image_grid_thw"].tolist()]
    return step_flops(model_config_from_dict(model_json(config)), [b["input_ids"].shape[1]] * len(b["input_ids"]),
                      frames, rows)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------- workers
def weights(cfg, seed=1234):
    from mindspeed_ms.tools.make_tiny_checkpoint import random_mm_state_dict
    return random_mm_state_dict(cfg, seed)


def build_ours(config, seq_length=None, chunked_loss=True):
    """(trainer, contract batch, tokens per step): the pretrain_vlm.py objects, benchmark weights loaded."""
    from mindspeed_ms.arguments import parse_args, validate_args
    from mindspeed_ms.training.build import build_model, init_runtime
    from mindspeed_ms.training.train_log import TrainLogger
    from mindspeed_ms.training.trainer import Trainer, load_model_state

    batch = make_batch(config, seq_length)
    tmp = tempfile.mkdtemp(prefix="bench_train_")
    path = os.path.join(tmp, "model.json")
    json.dump(model_json(config), open(path, "w"))
    s = batch["input_ids"].shape
    args = parse_args(["--mm-model", path, "--lr", "1e-5", "--train-iters", "1000", "--seq-length", str(s[1]),
                       "--micro-batch-size", str(s[0]), "--global-batch-size", str(s[0]), "--clip-grad", "1.0",
                       "--weight-decay", "0.01"])
    startup = validate_args(args, 1, "CPU", require_data=False)
    logger = TrainLogger(args.train_iters, False)
    init_runtime(args, "CPU", 1, logger)
    model = build_model(startup.model, args, "CPU")
    if not chunked_loss:
        model.network.chunked_loss = False
    trainer = Trainer(args, startup, 0, 1, logger, model, feed=None)
    load_model_state(trainer.named_params, weights(startup.model), "benchmark weights")
    contract, _ = model.network.prepare_batch(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                              batch["image_grid_thw"], labels=batch["labels"])
    return trainer, contract, int(batch["attention_mask"].sum())


def worker_ours(config, steps, warmup, seq_length, chunked_loss):
    trainer, contract, tokens = build_ours(config, seq_length, chunked_loss)
    times, cpu, losses, peaks = [], [], [], []
    for _ in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _norm, _lr, _tps = trainer.train_step([dict(contract)])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(loss)
        peaks.append(round(peak_rss_mb(), 1))
    return times, cpu, losses, tokens, peaks


def build_hf(cfg, compiled=False):
    """(HF model, AdamW, params) with the benchmark weights of `cfg`, Megatron's weight-decay groups."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from mindspeed_ms.checkpoint.names import mm_to_hf_state_dict
    from mindspeed_ms.config.model_config import config_to_hf
    from mindspeed_ms.training.optimizer import uses_weight_decay
    hf_cfg = config_to_hf(cfg)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**hf_cfg)).float()
    sd = {}
    for k, v in mm_to_hf_state_dict(weights(cfg), hf_cfg).items():
        for pattern, repl in model._checkpoint_conversion_mapping.items():   # released names -> module names
            k = re.sub(pattern, repl, k)
        sd[k] = torch.from_numpy(np.ascontiguousarray(v))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not cfg.text.tied]
    if missing or unexpected:
        raise RuntimeError(f"HF weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if compiled:
        model = torch.compile(model, backend="inductor")
    groups = [{"params": [p for n, p in named if uses_weight_decay(n, p)], "weight_decay": 0.01},
              {"params": [p for n, p in named if not uses_weight_decay(n, p)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-5, betas=(0.9, 0.999), eps=1e-8)
    return model, opt, [p for _, p in named]


def worker_hf(config, steps, warmup, seq_length, compiled=False):
    """HF eager, or with `compiled` HF + torch.compile (inductor, CPU): the first step then holds
    the compilation (reported as compile_s, not in the step time)."""
    import torch

    from mindspeed_ms.config.model_config import model_config_from_dict

    batch = make_batch(config, seq_length)
    model, opt, params = build_hf(model_config_from_dict(model_json(config)), compiled)
    inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
    times, cpu, losses, peaks = [], [], [], []
    for _ in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(float(loss.detach()))
        peaks.append(round(peak_rss_mb(), 1))
    return times, cpu, losses, int(batch["attention_mask"].sum()), peaks


def worker_main(a):
    if a.worker == "ours":
        times, cpu, losses, tokens, peaks = worker_ours(a.config, a.steps, a.warmup, a.seq_length,
                                                        not a.no_chunked_loss)
    else:
        times, cpu, losses, tokens, peaks = worker_hf(a.config, a.steps, a.warmup, a.seq_length,
                                                      compiled=a.worker == "hf_compile")
    timed = times[a.warmup:] if len(times) > a.warmup else times[-1:]
    step = statistics.median(timed)
    out = {"impl": a.worker, "config": a.config, "tokens_per_s": round(tokens / step, 1),
           "step_ms": round(step * 1000, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
           "compile_s": round(max(times[0] - step, 0.0), 2), "first_step_s": round(times[0], 2),
           "steps_ms": [round(t * 1000, 1) for t in timed], "tokens_per_step": tokens,
           "cpu_ms": round(statistics.median(cpu[a.warmup:] or cpu[-1:]) * 1000, 1),
           "loss_step1": losses[0], "seq_length": a.seq_length, "peak_rss_mb_by_step": peaks}
    flop = bench_flops(a.config, a.seq_length)
    out.update(step_gflop=round(flop / 1e9, 3), achieved_gflops=round(flop / step / 1e9, 2))
    if a.worker == "ours":
        out["chunked_loss"] = not a.no_chunked_loss
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------- driver
def matmul_peak_worker(size=2048):
    """benchmarks/flops.py --peak in a fresh process (MindSpore and torch matmul GFLOP/s)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "flops.py"), "--peak", "--size",
                           str(size)], capture_output=True, text=True, env=env, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"matmul peak failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def run_worker(impl, config, steps, warmup, seq_length=None, chunked=True):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--config", config, "--steps", str(steps),
           "--warmup", str(warmup)]
    if seq_length:
        cmd += ["--seq-length", str(seq_length)]
    if not chunked:
        cmd += ["--no-chunked-loss"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), GLOG_v="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{impl} worker failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def spread(values):
    med = statistics.median(values)
    return round((max(values) - min(values)) / med, 3) if med else 0.0


IMPLS = ("ours", "hf", "hf_compile")


def throughput(a):
    impls = IMPLS if not a.no_compile else IMPLS[:2]
    runs = {k: [] for k in impls}
    for r in range(a.rounds):
        order = impls[r % len(impls):] + impls[:r % len(impls)]      # rotated: each impl leads a round
        for impl in order:
            res = run_worker(impl, a.config, a.steps, a.warmup)
            res["round"] = r
            runs[impl].append(res)
            print(json.dumps(res), flush=True)
    med = {k: statistics.median(x["step_ms"] for x in v) for k, v in runs.items()}
    peak = matmul_peak_worker()
    summary = {"summary": True, "config": a.config, "rounds": a.rounds, "steps_per_run": a.steps,
               "ours_step_ms": med["ours"], "hf_step_ms": med["hf"], "matmul_peak": peak,
               "ours_spread": spread([x["step_ms"] for x in runs["ours"]]),
               "hf_spread": spread([x["step_ms"] for x in runs["hf"]]),
               "ratio_ours_over_hf": round(med["hf"] / med["ours"], 3),
               "ours_peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs["ours"]),
               "hf_peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs["hf"]),
               "ours_compile_s": statistics.median(x["compile_s"] for x in runs["ours"]),
               "loss_step1_ours": runs["ours"][0]["loss_step1"], "loss_step1_hf": runs["hf"][0]["loss_step1"]}
    summary["rss_ratio"] = round(summary["ours_peak_rss_mb"] / summary["hf_peak_rss_mb"], 3)
    summary["loss_rel_diff"] = (abs(summary["loss_step1_ours"] - summary["loss_step1_hf"])
                                / abs(summary["loss_step1_hf"]))
    best_peak = max(peak["mindspore_gflops"], peak["torch_gflops"])
    for impl in impls:
        gf = statistics.median(x["achieved_gflops"] for x in runs[impl])
        summary[f"{impl}_achieved_gflops"] = gf
        summary[f"{impl}_fraction_of_peak"] = round(gf / best_peak, 4)
    if "hf_compile" in runs:
        c = runs["hf_compile"]
        summary.update(hf_compile_step_ms=med["hf_compile"], hf_compile_spread=spread([x["step_ms"] for x in c]),
                       hf_compile_compile_s=statistics.median(x["compile_s"] for x in c),
                       loss_step1_hf_compile=c[0]["loss_step1"],
                       ratio_ours_over_best_peer=round(min(med["hf"], med["hf_compile"]) / med["ours"], 3))
        summary["loss_rel_diff"] = max(summary["loss_rel_diff"], abs(c[0]["loss_step1"] - summary["loss_step1_hf"])
                                       / abs(summary["loss_step1_hf"]))
    summary["same_loss"] = summary["loss_rel_diff"] < 1e-4
    tok = runs["ours"][0]["tokens_per_step"]
    print(f"\nconfig {a.config}: {tok} tokens per step, {a.rounds} round(s) x {a.steps} timed step(s)")
    print(f"{'impl':<11}{'step ms':>10}{'spread':>9}{'tokens/s':>10}{'peak RSS MB':>13}{'compile s':>11}")
    for impl in impls:
        rss = statistics.median(x["peak_rss_mb"] for x in runs[impl])
        comp = statistics.median(x["compile_s"] for x in runs[impl])
        sp = spread([x["step_ms"] for x in runs[impl]])
        print(f"{impl:<11}{med[impl]:>10.1f}{sp:>9.1%}{tok / med[impl] * 1000:>10.1f}"
              f"{rss:>13.0f}{comp:>11.2f}  {summary[impl + '_achieved_gflops']:.2f} GFLOP/s "
              f"({summary[impl + '_fraction_of_peak']:.1%} of the {best_peak:.0f} GFLOP/s matmul peak)")
    if "hf_compile" in runs:
        print(f"speed ratio ours / faster of HF eager and HF + torch.compile x{summary['ratio_ours_over_best_peer']}"
              f" (inductor compile {summary['hf_compile_compile_s']:.1f} s, not in its step time)")
    print(f"speed ratio ours/hf x{summary['ratio_ours_over_hf']}  RSS ours/hf x{summary['rss_ratio']}  "
          f"first-step loss {summary['loss_step1_ours']:.6f} vs {summary['loss_step1_hf']:.6f}")
    print(json.dumps(summary))
    return 0 if summary["same_loss"] else 1


def memory(a):
    runs = {True: [], False: []}
    for r in range(a.rounds):
        for chunked in ((True, False) if r % 2 == 0 else (False, True)):
            res = run_worker("ours", "small", a.steps, a.warmup, a.seq_length, chunked)
            res["round"] = r
            runs[chunked].append(res)
            print(json.dumps(res), flush=True)
    rss = {k: round(statistics.median(x["peak_rss_mb"] for x in v), 1) for k, v in runs.items()}
    first = {k: round(statistics.median(x["peak_rss_mb_by_step"][0] for x in v), 1) for k, v in runs.items()}
    step = {k: statistics.median(x["step_ms"] for x in v) for k, v in runs.items()}
    loss = {k: v[0]["loss_step1"] for k, v in runs.items()}
    summary = {"summary": True, "mode": "memory", "config": "small", "seq_length": a.seq_length,
               "steps_per_run": a.warmup + a.steps, "chunked_peak_rss_mb": rss[True], "full_peak_rss_mb": rss[False],
               "reduction": round(1 - rss[True] / rss[False], 3),
               "chunked_first_step_peak_rss_mb": first[True], "full_first_step_peak_rss_mb": first[False],
               "first_step_reduction": round(1 - first[True] / first[False], 3),
               "chunked_step_ms": step[True], "full_step_ms": step[False], "loss_chunked": loss[True],
               "loss_full": loss[False], "same_loss": abs(loss[True] - loss[False]) <= 1e-4 * abs(loss[False])}
    print(f"\nsmall config, seq {a.seq_length}, {a.warmup + a.steps} steps per run: peak RSS chunked loss "
          f"{rss[True]:.0f} MB vs full logits {rss[False]:.0f} MB ({summary['reduction']:.0%} lower; first step "
          f"alone {first[True]:.0f} vs {first[False]:.0f} MB, {summary['first_step_reduction']:.0%}); "
          f"step {step[True]:.0f} vs {step[False]:.0f} ms")
    print(json.dumps(summary))
    return 0 if summary["same_loss"] else 1


def at_least(low, what=""):
    """argparse type: an int >= low (a clear usage error instead of a crash in a worker)."""
    def parse(text):
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: give a whole number of at least {low}{what}")
        return value
    parse.__name__ = "int"   # argparse names it in "invalid int value"
    return parse


# memory mode: two images take 2 x (64 + 2) tokens; the rest is text, half of it labelled
MIN_SEQ_LENGTH = 160


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("tiny", "small"), default="tiny")
    p.add_argument("--rounds", type=at_least(1), default=3, help="A B alternations (each a fresh process per impl)")
    p.add_argument("--steps", type=at_least(1), default=4, help="timed steps per run")
    p.add_argument("--warmup", type=at_least(0), default=2, help="untimed steps per run (the first compiles)")
    p.add_argument("--seq-length", type=at_least(MIN_SEQ_LENGTH, " (two 224x224 images are 132 tokens)"),
                   default=None,
                   help="memory mode: small config at this many tokens per sample, chunked loss on vs off")
    p.add_argument("--smoke", action="store_true", help="one run each, 1 warm-up + 1 timed step (CI)")
    p.add_argument("--no-compile", action="store_true", help="leave out the HF + torch.compile peer")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--no-chunked-loss", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker_main(a)
        return 0
    if a.smoke:
        a.rounds, a.steps, a.warmup = 1, 1, 1
    if a.seq_length:
        return memory(a)
    return throughput(a)


if __name__ == "__main__":
    sys.exit(main())
