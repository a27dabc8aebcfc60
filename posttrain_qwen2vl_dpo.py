"""Qwen2-VL DPO preference training, where MindSpeed-MM's finetune_qwen2vl_72b_dpo.sh calls it.

    msrun --worker_num N --local_worker_num N ... posttrain_qwen2vl_dpo.py <Megatron/MindSpeed-MM flags>
        --dpo-beta 0.1 --dpo-loss-type sigmoid --dpo-label-smoothing 0.0 --pref-ftx 0.0 --ref-model DIR
        [--lora-target-modules linear_qkv linear_proj linear_fc1 linear_fc2 --lora-r 8 --lora-alpha 16]

See docs/lora_dpo.md."""
import sys

from mindspeed_ms.rl.posttrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
