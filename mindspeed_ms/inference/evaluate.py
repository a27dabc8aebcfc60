"""Answer a held-out MLLM-format JSON file and report exact-match accuracy per question type.

    python -m mindspeed_ms.inference.evaluate --load CKPT_OR_HF_DIR --data held_out.json \
        [--mm-model model.json --mm-data data.json] [--types types.json] [--output result.json]

Each sample's last assistant message is the reference answer; everything before it (earlier turns
included, as teacher-forced history) is the prompt. An answer is correct when it equals the
reference after trimming spaces, a final full stop and case. The question type of sample i is taken
from `--types` (a JSON list, one type per sample), else from a `<data>_types.json` file beside the
data (what `make_demo_dataset` writes), else from a "type" key of the sample, else "all".
Image paths are resolved like data.json's `dataset_dir` (default: the data file's directory).
"""
import argparse
import json
import os
import sys
import time
from collections import OrderedDict

from mindspeed_ms.inference.chat import add_model_args, build_from_args
from mindspeed_ms.help_format import DefaultsHelpFormatter


def normalize_answer(text):
    return text.strip().rstrip(".").strip().lower()


def load_eval_samples(data, types=None, dataset_dir=None):
    """[(messages_without_answer, images, reference, type)] from an MLLM-format JSON list."""
    from mindspeed_ms.data.formats import find_media

    try:
        with open(data, encoding="utf-8") as f:
            samples = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--data {data}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--data {data}: not valid JSON: {e}") from None
    if not isinstance(samples, list) or not samples:
        raise ValueError(f"--data {data}: expected a non-empty JSON list of samples")
    type_list = None
    side = os.path.splitext(data)[0] + "_types.json"
    if types or os.path.isfile(side):
        with open(types or side, encoding="utf-8") as f:
            type_list = json.load(f)
        if len(type_list) != len(samples):
            raise ValueError(f"{types or side} has {len(type_list)} types for {len(samples)} samples in {data}")
    root = dataset_dir if dataset_dir is not None else os.path.dirname(os.path.abspath(data))
    out = []
    for i, s in enumerate(samples):
        msgs = s.get("messages") if isinstance(s, dict) else None
        if not msgs or len(msgs) % 2 or msgs[-1].get("role") != "assistant":
            raise ValueError(f"{data}: sample {i} must have user/assistant message pairs ending with the "
                             f"assistant's reference answer")
        qtype = type_list[i] if type_list else s.get("type", "all")
        images = find_media(s.get("images") or [], root)
        for p in images:
            if not os.path.isfile(p):
                raise ValueError(f"{data}: sample {i}: image {p} not found (set --dataset-dir to the media root)")
        out.append(([{"role": m["role"], "content": m["content"]} for m in msgs[:-1]], images,
                    msgs[-1]["content"], qtype))
    return out


def accuracy_by_type(records):
    """{type: fraction correct} in order of first appearance, plus "overall"."""
    totals, right = OrderedDict(), {}
    for r in records:
        totals[r["type"]] = totals.get(r["type"], 0) + 1
        right[r["type"]] = right.get(r["type"], 0) + int(r["correct"])
    acc = OrderedDict((t, right[t] / n) for t, n in totals.items())
    acc["overall"] = sum(right.values()) / max(1, len(records))
    return acc, totals


def evaluate(loaded, builder, sampling, samples, batch_size=8, max_new_tokens=10, progress=None):
    from mindspeed_ms.inference.generate import generate

    records = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = builder.batch([builder.build(msgs, imgs) for msgs, imgs, _, _ in chunk])
        out = generate(loaded.model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                       batch.get("image_grid_thw"), max_new_tokens=max_new_tokens, sampling=sampling,
                       stop_token_ids=builder.stop_ids, pad_token_id=builder.pad_id)
        for (msgs, imgs, ref, qtype), toks in zip(chunk, out.tokens):
            pred = builder.decode(toks)
            records.append({"type": qtype, "question": msgs[-1]["content"], "images": imgs, "reference": ref,
                            "prediction": pred, "correct": normalize_answer(pred) == normalize_answer(ref)})
        if progress:
            progress(len(records), len(samples))
    return records


def format_table(acc, totals):
    lines = [f"{'type':<14}{'n':>6}{'accuracy':>10}"]
    for t, n in totals.items():
        lines.append(f"{t:<14}{n:>6}{acc[t]:>10.3f}")
    lines.append(f"{'overall':<14}{sum(totals.values()):>6}{acc['overall']:>10.3f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.inference.evaluate",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="held-out MLLM-format JSON file")
    p.add_argument("--types", help="JSON list of question types, one per sample")
    p.add_argument("--dataset-dir", help="media root for relative image paths (default: the data file's dir)")
    p.add_argument("--batch-size", type=int, default=8, help="samples answered together (left-padded batch)")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples")
    p.add_argument("--output", help="write accuracies and every prediction to this JSON file")
    p.set_defaults(max_new_tokens=10)
    a = p.parse_args(argv)
    for flag, value in (("--batch-size", a.batch_size), ("--limit", a.limit)):
        if value is not None and value < 1:
            print(f"evaluate: error: {flag} {value}: give a positive number of samples", file=sys.stderr)
            return 2
    try:
        samples = load_eval_samples(a.data, a.types, a.dataset_dir)[:a.limit]
        loaded, builder, sampling = build_from_args(a)
        t0 = time.time()
        tty = sys.stderr.isatty()
        records = evaluate(loaded, builder, sampling, samples, a.batch_size, a.max_new_tokens,
                           (lambda i, n: print(f"\r  answered {i}/{n}", end="", file=sys.stderr)) if tty else None)
        if tty:
            print(file=sys.stderr)
    except (ValueError, OSError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    acc, totals = accuracy_by_type(records)
    seconds = time.time() - t0
    print(f"evaluated {a.load} ({loaded.kind} checkpoint, {loaded.tag}) on {len(records)} samples of {a.data} "
          f"in {seconds:.1f}s")
    print(format_table(acc, totals))
    if a.output:
        os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
        with open(a.output, "w", encoding="utf-8") as f:
            json.dump({"load": a.load, "tag": loaded.tag, "data": a.data, "seconds": round(seconds, 2),
                       "accuracy": acc, "counts": totals, "records": records}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
