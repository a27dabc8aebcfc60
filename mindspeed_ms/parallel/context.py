"""MindSpore parallel context for a sharded (Ascend) run: the plan applied to the model, the
pipeline wrapper for micro-batches, and the `AutoParallel` cell carrying the mesh settings.

Nothing here runs on CPU: `AutoParallel` needs `mindspore.communication.init()` on a backend with
semi-auto parallel, and `check_backend_supports` stops a CPU run with TP/PP/CP > 1 before this is
reached. Data-parallel CPU runs do not use this module.
"""
from mindspeed_ms.parallel.config import ParallelConfig, check_backend_supports
from mindspeed_ms.parallel.shard_plan import ShardPlan, apply_shard_plan, stage_config


def build_parallel_network(model, net_with_loss, plan: ShardPlan, backend: str):
    """Return the network to train under semi-auto parallel.

    `model` is the Qwen2-VL Cell inside `net_with_loss` (the plan's Cell paths are relative to
    it). Strategies are set on the key primitives (matmuls, attention, norms, embedding, loss);
    MindSpore's sharding propagation derives the layouts of the element-wise ops between them.
    """
    from mindspore.parallel.auto_parallel import AutoParallel
    from mindspore.parallel.nn import Pipeline

    cfg: ParallelConfig = plan.cfg
    check_backend_supports(cfg, backend)
    apply_shard_plan(model, plan)
    net = net_with_loss
    if cfg.pp > 1:
        # Cell paths relative to net_with_loss: find the prefix under which `model` sits
        prefix = next(name for name, cell in net_with_loss.cells_and_names() if cell is model)
        stages, segments = stage_config(plan)
        pre = f"{prefix}." if prefix else ""
        net = Pipeline(net_with_loss, cfg.num_micro_batches,
                       stage_config={pre + k: v for k, v in stages.items()},
                       segment_config={pre + k: v for k, v in segments.items()} or None)
    par = AutoParallel(net, parallel_mode="sharding_propagation")
    par.dataset_strategy("data_parallel")
    if cfg.pp > 1:
        par.pipeline(stages=cfg.pp, interleave=cfg.vpp > 1, scheduler="1f1b")
    if cfg.use_distributed_optimizer:
        # Megatron's distributed optimizer: optimizer states (and the fp32 master copy) sharded
        # over the data-parallel group
        par.hsdp(shard_size=-1, threshold=64, optimizer_level="level1")
    return par
