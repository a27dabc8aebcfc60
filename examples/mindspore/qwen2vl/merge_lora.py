"""Fold trained LoRA adapters into the base model: a `release` checkpoint in the base's TP/PP layout.

    python examples/mindspore/qwen2vl/merge_lora.py \
        --base-save-dir ckpt/mm_path/Qwen2-VL-72B-Instruct \
        --lora-save-dir save_dir \
        --merge-save-dir ckpt/mm_path/Qwen2-VL-72B-merged \
        [--lora-r 8 --lora-alpha 16] [--ckpt-format torch|safetensors]

Each mp_rank file of the output holds its base slice plus its slice of (alpha / r) * B @ A. r and
alpha default to what the LoRA run recorded in its checkpoint. The output converts to HF with
    mm-convert Qwen2VLConverter mm_to_hf --cfg.mm_dir <merge-save-dir> ...
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from mindspeed_ms.peft.lora_merge import LoRAMergeError, merge_lora_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="merge_lora.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-save-dir", required=True, help="the base model's MM checkpoint (what the LoRA run loaded)")
    p.add_argument("--lora-save-dir", required=True, help="the LoRA run's --save directory (adapters only)")
    p.add_argument("--merge-save-dir", required=True, help="where to write the merged release checkpoint")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: recorded in the LoRA checkpoint)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: recorded in the LoRA checkpoint)")
    p.add_argument("--ckpt-format", choices=["torch", "safetensors"], default=None,
                   help="rank-file format of the output (default: the base checkpoint's)")
    a = p.parse_args(argv)
    fmt = {"torch": "pt", "safetensors": "safetensors", None: None}[a.ckpt_format]
    try:
        out = merge_lora_checkpoint(a.base_save_dir, a.lora_save_dir, a.merge_save_dir, a.lora_r, a.lora_alpha, fmt)
    except (LoRAMergeError, ValueError, OSError) as e:
        print(f"merge_lora.py: error: {e}", file=sys.stderr)
        return 1
    print(f"merged LoRA adapters of {a.lora_save_dir} into {a.base_save_dir}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
