"""LLaVA-Instruct-150K -> MindSpeed-MM MLLM format (the dataset of data_*.json).

    python examples/mindspore/qwen2vl/llava_instruct_2_mllm_demo_format.py \
        [--llava-json ./data/llava_instruct_150k.json] [--image-dir ./data/COCO2017/train2017] \
        [--output ./data/mllm_format_llava_instruct_data.json]

Each record {"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]} becomes
{"images": ["<image-dir>/<image>"], "messages": [{"role": "user"|"assistant", "content"}]}.
Records whose image file is missing are skipped (and counted); records without an image get
"images": []; another "from" value is an error; the <image> placeholder stays in the text.
An existing output file is not overwritten (pass --overwrite).
"""
import argparse
import json
import os
import sys

ROLES = {"human": "user", "gpt": "assistant"}


def convert(records, image_dir, source="<input>"):
    """Returns (converted records, number skipped for a missing image)."""
    out, missing = [], 0
    for i, item in enumerate(records):
        images = []
        if item.get("image"):
            path = os.path.join(image_dir, item["image"])
            if not os.path.exists(path):
                missing += 1
                continue
            images = [path]
        messages = []
        for turn in item.get("conversations", []):
            role = ROLES.get(turn.get("from"))
            if role is None:
                raise ValueError(f"{source}: record {i} (id {item.get('id')}): unknown role {turn.get('from')!r}; "
                                 f"expected 'human' or 'gpt'")
            messages.append({"role": role, "content": turn["value"]})
        out.append({"images": images, "messages": messages})
    return out, missing


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llava-json", default="./data/llava_instruct_150k.json")
    p.add_argument("--image-dir", default="./data/COCO2017/train2017")
    p.add_argument("--output", default="./data/mllm_format_llava_instruct_data.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    try:
        if os.path.exists(args.output) and not args.overwrite:
            raise FileExistsError(f"{args.output} already exists: rename or remove it, or pass --overwrite")
        with open(args.llava_json, encoding="utf-8") as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{args.llava_json}: not valid JSON ({e})") from None
        if not isinstance(records, list):
            raise ValueError(f"{args.llava_json}: expected a JSON list of LLaVA records")
        out, missing = convert(records, args.image_dir, args.llava_json)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    os.replace(tmp, args.output)
    print(f"finish converting dataset into {args.output}: {len(out)} samples"
          + (f", {missing} skipped (image not found in {args.image_dir})" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
