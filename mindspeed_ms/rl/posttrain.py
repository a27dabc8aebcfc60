"""posttrain_qwen2vl_dpo.py's entry point: flags, data and reference checked before any compute, then
the data-parallel `DPOTrainer` (rl/dpo_trainer.py) or, on Ascend with TP/PP/CP (or the distributed
optimizer), the sharded one (rl/sharded_dpo.py) on the sharded SFT trainer's skeleton."""
from __future__ import annotations

import sys

from mindspeed_ms.arguments import ArgumentError, parse_args, validate_args
from mindspeed_ms.rl.dpo_log import DPOTrainLogger
from mindspeed_ms.rl.dpo_trainer import (PROG, DPOTrainer, build_dpo_feed, build_reference, check_dpo_args,
                                         resolve_reference)
from mindspeed_ms.training.backend import detect_backend, dist_env
from mindspeed_ms.training.pretrain import run_trainer
from mindspeed_ms.training.trainer import TrainingError


def main(argv=None) -> int:
    """posttrain_qwen2vl_dpo.py: returns the process exit code."""
    from mindspeed_ms.parallel.train_setup import uses_sharded_path
    from mindspeed_ms.peft.lora_model import LoRAConfigError
    rank, world = dist_env()
    is_log_rank = rank == world - 1
    try:
        args = parse_args(argv, prog=PROG)
        check_dpo_args(args)
        backend = detect_backend()
        startup = validate_args(args, world_size=world, backend=backend)
        from mindspeed_ms.training.save_dir import prepare_save_dir
        prepare_save_dir(args, startup, rank)      # writable, room for a checkpoint, the --save lock
        ref_dir = resolve_reference(args)
        sharded = uses_sharded_path(startup.parallel, backend)
        if sharded:
            from mindspeed_ms.rl.sharded_dpo import build_sharded_dpo_feed
            feed = build_sharded_dpo_feed(args, startup, rank, backend)
        else:
            feed = build_dpo_feed(args, startup, rank)
    except (ArgumentError, TrainingError, LoRAConfigError, ValueError, OSError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    logger = DPOTrainLogger(args.train_iters, is_log_rank, args.tensorboard_dir, log_tps=args.log_tps)

    def build():
        from mindspeed_ms.peft.lora_training import attach_lora
        from mindspeed_ms.training.build import build_model, init_runtime
        init_runtime(args, backend, world, logger, data_parallel=not sharded)
        if sharded:
            # lazy: each rank allocates and loads only its slices (policy, and a frozen copy if any)
            from mindspeed_ms.rl.sharded_dpo import ShardedDPOTrainer, build_reference_model
            from mindspeed_ms.training.sharded_trainer import build_sharded_model
            model, lora = build_sharded_model(startup, args, backend, logger, lazy=True)
            ref = build_reference_model(startup, args, backend, lora, ref_dir, lazy=True)
            return ShardedDPOTrainer(args, startup, rank, world, logger, model, feed, backend, lazy=True,
                                     lora=lora, reference_model=ref, ref_dir=ref_dir), lora
        model = build_model(startup.model, args, backend)
        lora = attach_lora(model, args, logger)     # LoRA: adapters on, base frozen and loaded here
        reference = build_reference(args, startup, backend, ref_dir, model, lora)
        return DPOTrainer(args, startup, rank, world, logger, model, feed, reference), lora

    return run_trainer(args, startup, rank, world, logger, build)
