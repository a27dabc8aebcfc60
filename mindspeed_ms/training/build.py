"""Runtime set-up and model construction for training (after validation, before the loop)."""
from __future__ import annotations

import mindspore as ms

from mindspeed_ms.training.rng_state import seed_everything


def init_runtime(args, backend: str, world: int, logger):
    """GRAPH mode on the detected device; under msrun, communication init and data parallel."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(backend)
    if world > 1:
        from mindspore.communication import init
        init()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=False,
                                     device_num=world)
        logger.print(f" > data parallel over {world} msrun workers (gradients summed by AllReduce; the loss "
                     f"weights carry the 1/N)")
    seed_everything(args.seed)


def build_model(model_cfg, args, backend: str):
    """The Qwen2-VL model wrapped as a loss Cell. fp32 on CPU; bf16 with flash attention on Ascend
    when --bf16 / --use-flash-attn ask for them."""
    from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration
    from mindspeed_ms.training.train_step import LossCell
    ascend = backend == "Ascend"
    dtype = ms.bfloat16 if (ascend and args.bf16) else ms.float32
    attention = "flash" if (ascend and args.use_flash_attn) else "matmul"
    return LossCell(Qwen2VLForConditionalGeneration(model_cfg, attention_backend=attention, dtype=dtype))
