"""Qwen2-VL inference entry point, where MindSpeed-MM's scripts call it.

    python inference_vlm.py <Megatron flags> --load MM_CKPT --mm-model inference_qwen2vl_7b.json

Answers the JSON's `prompts` about its `image_path` and prints the text. See docs/inference.md."""
import sys

from mindspeed_ms.inference.vlm_cli import main_inference

if __name__ == "__main__":
    sys.exit(main_inference(sys.argv[1:]))
