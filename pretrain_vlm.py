"""Qwen2-VL fine-tuning entry point, where MindSpeed-MM's scripts call it.

    msrun --worker_num N --local_worker_num N ... pretrain_vlm.py <Megatron/MindSpeed-MM flags>

See docs/training.md for the flags, the loss modes, checkpoints and logs."""
import sys

from mindspeed_ms.training.pretrain import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
