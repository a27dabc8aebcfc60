"""pretrain_vlm.py's entry point: parse and validate everything before any compute, then the
data-parallel `Trainer` (training/trainer.py) or, on Ascend with TP/PP/CP (or the distributed
optimizer), the sharded one (training/sharded_trainer.py). Kept apart from the trainer so that the
trainer module does not import the sharded trainer and LoRA, which import it."""
from __future__ import annotations

import sys

from mindspeed_ms.arguments import ArgumentError, parse_args, validate_args
from mindspeed_ms.training.backend import detect_backend, dist_env
from mindspeed_ms.training.train_log import TrainLogger
from mindspeed_ms.training.trainer import Trainer, TrainingError


def main(argv=None) -> int:
    """pretrain_vlm.py: returns the process exit code."""
    rank, world = dist_env()
    is_log_rank = rank == world - 1
    try:
        args = parse_args(argv)
        backend = detect_backend()
        startup = validate_args(args, world_size=world, backend=backend)
        from mindspeed_ms.training.save_dir import prepare_save_dir
        prepare_save_dir(args, startup, rank)      # writable, room for a checkpoint, the --save lock
        from mindspeed_ms.parallel.train_setup import uses_sharded_path
        # Ascend with TP/PP/CP (or the distributed optimizer): the semi-auto-parallel step of
        # training.sharded_trainer; on CPU validate_args has already stopped such layouts
        sharded = uses_sharded_path(startup.parallel, backend)
        if sharded:
            from mindspeed_ms.training.sharded_trainer import build_sharded_feed
            feed = build_sharded_feed(args, startup, rank, backend)
        else:
            from mindspeed_ms.training.build import build_feed
            feed = build_feed(args, startup, rank)
    except (ArgumentError, TrainingError, ValueError, OSError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    logger = TrainLogger(args.train_iters, is_log_rank, args.tensorboard_dir, log_tps=args.log_tps)

    def build():
        from mindspeed_ms.training.build import build_model, init_runtime
        init_runtime(args, backend, world, logger, data_parallel=not sharded)
        if sharded:
            # lazy: built unallocated, each rank allocates and loads only its own slices
            from mindspeed_ms.training.sharded_trainer import ShardedTrainer, build_sharded_model
            model, lora = build_sharded_model(startup, args, backend, logger, lazy=True)
            return ShardedTrainer(args, startup, rank, world, logger, model, feed, backend, lazy=True, lora=lora), lora
        model = build_model(startup.model, args, backend)
        from mindspeed_ms.peft.lora_training import attach_lora
        # --lora-target-modules: adapters on, base frozen + loaded
        lora = attach_lora(model, args, logger)
        return Trainer(args, startup, rank, world, logger, model, feed), lora

    return run_trainer(args, startup, rank, world, logger, build)


def run_trainer(args, startup, rank, world, logger, build) -> int:
    """What both entry points do once everything is validated: start-up notices, W&B, `build()` ->
    (trainer, LoRA or None), resume, train; returns the exit code (1: a training or data error)."""
    from mindspeed_ms.data.dataset import DataError
    from mindspeed_ms.training.wandb_writer import attach_wandb
    for n in startup.notices:
        logger.notice(n)
    attach_wandb(logger, args)
    try:
        trainer, lora = build()
        if lora is not None:
            lora.bind(trainer)
        if args.load and (lora is None or lora.resume_from_load):
            trainer.load()
        trainer.train()
    except (TrainingError, DataError) as e:     # DataError: a sample that broke after preprocessing
        if rank in (0, world - 1):
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        logger.close()
    return 0
