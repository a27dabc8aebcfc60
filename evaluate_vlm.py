"""Qwen2-VL benchmark evaluation entry point, where MindSpeed-MM's scripts call it.

    python evaluate_vlm.py <Megatron flags> --load MM_CKPT --mm-model evaluate_qwen2vl_7b.json

Answers every row of the JSON's `dataset_path` (a VLMEvalKit TSV of ai2d_test, mmmu_dev_val,
chartqa_test or docvqa_val) and writes MindSpeed-MM's result files to `result_output_path`.
See docs/inference.md."""
import sys

from mindspeed_ms.inference.vlm_cli import main_evaluate

if __name__ == "__main__":
    sys.exit(main_evaluate(sys.argv[1:]))
