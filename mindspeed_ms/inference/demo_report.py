"""The tiny demo's closing report: training figures from the log, accuracy before/after per type.

    python -m mindspeed_ms.inference.demo_report --run-dir DIR --train-log LOG \
        --before eval_before.json --after eval_after.json [--chat-mm TEXT --chat-hf TEXT] [--total-seconds S]

Reads the Megatron-style iteration lines of the training log ("iteration N/ M | ... elapsed time per
iteration (ms): T | ... global batch size: G | lm loss: L | ... tokens per sample: K |"), the
evaluation JSON files written by `mindspeed_ms.inference.evaluate`, and writes DIR/report.json with
the keys steps, seconds, tokens_per_s, loss_first, loss_last, accuracy_before, accuracy_after
(type -> fraction), plus the chance level of each question type and where the loss curve is.
"""
import argparse
import json
import os
import re
import sys

from mindspeed_ms.tools.make_demo_dataset import COUNT_WORDS, PALETTE, SHAPES

_ITER = re.compile(r"iteration\s+(\d+)/\s*(\d+)\s*\|")
_FIELD = {
    "ms": re.compile(r"elapsed time per iteration \(ms\):\s*([0-9.eE+-]+)"),
    "gbs": re.compile(r"global batch size:\s*(\d+)"),
    "loss": re.compile(r"lm loss:\s*([0-9.eE+-]+)"),
    "tps": re.compile(r"tokens per sample:\s*([0-9.eE+-]+)"),
}
_TRAINED = re.compile(r"trained (\d+) iterations in ([0-9.]+)s")
_PNG = re.compile(r"loss curve:\s*(\S+\.png)")

# Answering uniformly at random among the answers a question type allows.
CHANCE = {"colour": 1 / len(PALETTE), "shape": 1 / len(SHAPES), "count": 1 / len(COUNT_WORDS),
          "position": 1 / 2, "multi_image": 1 / len(PALETTE), "multi_turn": 1 / len(SHAPES)}


def parse_train_log(path):
    """{"steps", "seconds", "tokens_per_s", "loss_first", "loss_last", "losses", "loss_curve_png"}."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    iters = []
    png, trained = None, None
    for line in lines:
        m = _ITER.search(line)
        if m and "lm loss:" in line:
            rec = {"iteration": int(m.group(1))}
            for k, rx in _FIELD.items():
                fm = rx.search(line)
                rec[k] = float(fm.group(1)) if fm else None
            iters.append(rec)
        pm, tm = _PNG.search(line), _TRAINED.search(line)
        png = pm.group(1) if pm else png
        trained = (int(tm.group(1)), float(tm.group(2))) if tm else trained
    if not iters:
        raise ValueError(f"{path}: no training iteration lines ('iteration N/ M | ... lm loss: ...'); "
                         f"did the training run start?")
    step_seconds = sum(r["ms"] for r in iters) / 1000.0
    tokens = sum(r["gbs"] * r["tps"] for r in iters if r["gbs"] and r["tps"])
    return {"steps": iters[-1]["iteration"],
            "seconds": round(trained[1] if trained else step_seconds, 1),
            "tokens_per_s": round(tokens / step_seconds, 1) if step_seconds else None,
            "loss_first": iters[0]["loss"], "loss_last": iters[-1]["loss"],
            "losses": [r["loss"] for r in iters], "loss_curve_png": png}


def _accuracy(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["accuracy"]


def build_report(train_log, before, after, chat_mm=None, chat_hf=None, total_seconds=None):
    t = parse_train_log(train_log)
    acc_before, acc_after = _accuracy(before), _accuracy(after)
    report = {k: t[k] for k in ("steps", "seconds", "tokens_per_s", "loss_first", "loss_last")}
    report["accuracy_before"] = acc_before
    report["accuracy_after"] = acc_after
    report["chance"] = {k: round(CHANCE[k], 3) for k in acc_after if k in CHANCE}
    report["loss_curve_png"] = t["loss_curve_png"]
    if total_seconds is not None:
        report["total_seconds"] = float(total_seconds)
    if chat_mm is not None or chat_hf is not None:
        report["chat"] = {"mm_checkpoint": chat_mm, "hf_dir": chat_hf, "same": chat_mm == chat_hf}
    return report


def format_report(r):
    lines = [
        f"steps: {r['steps']}   training time: {r['seconds']:.1f}s   tokens/s: {r['tokens_per_s']}",
        f"loss: first {r['loss_first']:.4f} -> last {r['loss_last']:.4f}",
        f"{'question type':<14}{'before':>8}{'after':>8}{'chance':>8}",
    ]
    for k, after in r["accuracy_after"].items():
        chance = r["chance"].get(k)
        lines.append(f"{k:<14}{r['accuracy_before'].get(k, 0.0):>8.3f}{after:>8.3f}"
                     f"{(f'{chance:.3f}' if chance is not None else '-'):>8}")
    if r.get("loss_curve_png"):
        lines.append(f"loss curve: {r['loss_curve_png']}")
    if "chat" in r:
        c = r["chat"]
        lines.append(f"chat, trained MM checkpoint: {c['mm_checkpoint']!r} | its HF conversion: {c['hf_dir']!r} "
                     f"({'same' if c['same'] else 'DIFFERENT'})")
    if "total_seconds" in r:
        lines.append(f"whole demo: {r['total_seconds']:.0f}s")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.inference.demo_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="the demo run's folder; report.json is written there")
    p.add_argument("--train-log", required=True, help="the training log (iteration lines are read for steps, loss, tokens/s)")
    p.add_argument("--before", required=True, help="evaluation JSON of the untrained model (mindspeed_ms.inference.evaluate --out)")
    p.add_argument("--after", required=True, help="evaluation JSON of the trained model")
    p.add_argument("--chat-mm", help="the trained MindSpeed-MM checkpoint's answer to the demo question (the text)")
    p.add_argument("--chat-hf", help="the answer of its mm_to_hf conversion to the same question (the text)")
    p.add_argument("--total-seconds", type=float, help="wall time of the whole demo, for the report")
    a = p.parse_args(argv)
    try:
        r = build_report(a.train_log, a.before, a.after, a.chat_mm, a.chat_hf, a.total_seconds)
    except (OSError, ValueError, KeyError) as e:
        print(f"demo_report: error: {e}", file=sys.stderr)
        return 1
    out = os.path.join(a.run_dir, "report.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(r, f, indent=1)
        f.write("\n")
    print(format_report(r))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
