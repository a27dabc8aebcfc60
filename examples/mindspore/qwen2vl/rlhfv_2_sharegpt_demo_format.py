"""RLHF-V (HF dataset saved locally) -> the ranking format of data_72b_dpo.json.

    python examples/mindspore/qwen2vl/rlhfv_2_sharegpt_demo_format.py \
        [--dataset ./data/datasets/rlhf-v] [--image-folder ./data/rlhf_v_images/res] \
        [--output ./data/rlhf-v.json]

Each record {"conversations": [{"value"}], "chosen": {"value"}, "rejected": {"value"},
"images": [{"bytes"}]} becomes {"messages": [{"role": "user", "content"}], "chosen": {"role":
"assistant", "content"}, "rejected": {...}, "images": ["<image-folder>/NNNN.jpg"]}: the image bytes
are written to disk and verified; a record with missing keys, no image or a bad image is skipped
(reported with its index) and its image file removed.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from PIL import Image


def validate_image(path):
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except (OSError, SyntaxError):
        return False


def convert_record(index, item, image_folder):
    for key in ("conversations", "chosen", "rejected", "images"):
        if key not in item:
            raise KeyError(f"missing key {key!r}")
    entry = {"messages": [{"role": "user", "content": item["conversations"][0]["value"]}],
             "chosen": {"role": "assistant", "content": item["chosen"]["value"]},
             "rejected": {"role": "assistant", "content": item["rejected"]["value"]}}
    if not item["images"]:
        raise ValueError("empty images list")
    data = item["images"][0].get("bytes") if isinstance(item["images"][0], dict) else None
    if not data:
        raise ValueError("missing image bytes")
    path = Path(image_folder) / f"{index:04d}.jpg"
    path.write_bytes(data)
    if not validate_image(path):
        path.unlink()
        raise ValueError("invalid image file")
    entry["images"] = [str(path)]
    return entry


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="./data/datasets/rlhf-v", help="local copy of the HF RLHF-V dataset")
    p.add_argument("--image-folder", default="./data/rlhf_v_images/res")
    p.add_argument("--output", default="./data/rlhf-v.json")
    p.add_argument("--split", default="train")
    args = p.parse_args(argv)
    from datasets import load_dataset

    if not os.path.exists(args.dataset):
        print(f"error: dataset {args.dataset} not found (download RLHF-V there first)", file=sys.stderr)
        return 1
    try:
        ds = load_dataset(args.dataset, split=args.split)
    except Exception as e:  # datasets raises many types for unreadable folders
        print(f"error: cannot load {args.dataset}: {e}", file=sys.stderr)
        return 1
    Path(args.image_folder).mkdir(parents=True, exist_ok=True)
    out, skipped = [], 0
    for index, item in enumerate(ds):
        try:
            out.append(convert_record(index, item, args.image_folder))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            skipped += 1
            print(f"skipping item {index}: {e}", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=2)
    print(f"Successfully processed {len(out)} items ({skipped} skipped). Output saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
