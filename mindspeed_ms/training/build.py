"""Runtime set-up and model construction for training (after validation, before the loop)."""
from __future__ import annotations

import mindspore as ms

from mindspeed_ms.training.rng_state import seed_everything


def _size_cpu_memory_pool():
    """A 1 GB memory pool growing by 1 GB (MindSpore's default: 2 GB + 2 GB) with the memory-first
    allocator ("O1"). Measured on the small benchmark config at --seq-length 1024: with "O0" the pool
    places the second step's buffers in untouched parts of its blocks, so resident memory grows by
    ~1 GB after step 1 (3.76 -> 4.78 GB) although the pool's peak use is the same 1.34 GB; with "O1"
    it stays at 3.76 GB and the step is no slower. MindSpore accepts this once per process and only
    before the device is set; a second call (tests build several trainers) keeps the pool as it is."""
    try:
        ms.runtime.set_memory(init_size="1GB", increase_size="1GB", optimize_level="O1")
    except RuntimeError:
        pass


def init_runtime(args, backend: str, world: int, logger, data_parallel: bool = True):
    """GRAPH mode on the detected device; under msrun, communication init and data parallel
    (`data_parallel=False`: the sharded path, whose step carries its own AutoParallel settings)."""
    if backend == "CPU":
        _size_cpu_memory_pool()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(backend)
    if world > 1:
        from mindspore.communication import init
        init()
    if world > 1 and data_parallel:
        # No parallel context: the step graphs reduce gradients and statistics with their own
        # AllReduce (train_step.ApplyGradients), which runs in MindSpore's default stand-alone mode
        # once communication is initialised; set_auto_parallel_context is deprecated in 2.10.
        logger.print(f" > data parallel over {world} msrun workers (gradients summed by AllReduce; the loss "
                     f"weights carry the 1/N)")
    seed_everything(args.seed)


def build_model(model_cfg, args, backend: str):
    """The model of model.json's family (`model_id`, models/registry.py) wrapped as a loss Cell.
    fp32 on CPU; bf16 with flash attention on Ascend when --bf16 / --use-flash-attn ask for them."""
    from mindspeed_ms.models import model_class_for
    from mindspeed_ms.training.train_step import LossCell
    ascend = backend == "Ascend"
    dtype = ms.bfloat16 if (ascend and args.bf16) else ms.float32
    attention = "flash" if (ascend and args.use_flash_attn) else "matmul"
    return LossCell(model_class_for(model_cfg)(model_cfg, attention_backend=attention, dtype=dtype))


def build_feed(args, startup, rank: int, collator_options=None):
    """Datasets of --mm-data (preprocessed, cached), the qwen2vl collator, and this rank's feed.
    `rank` is the data-parallel index; `collator_options(train_dataset, data_cfg) -> dict` adds the
    collator's keyword arguments (the sharded path's fixed shapes, `training.sharded_trainer`).

    Sample order: `shuffle` of dataloader_param (SequentialSampler never shuffles), seeded by --seed;
    LengthGroupedSampler / BucketBatchSampler group it by sample length (`data.sampler.feed_order`).
    The Megatron micro-batch partition of `DataFeed` (see its docstring) is used for every
    sampler_type, so DP and single-process runs partition each global batch the same way."""
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.data.collator import build_collator
    from mindspeed_ms.data.dataset import build_datasets

    cfg = load_data_json(args.mm_data)
    dl = cfg.dataloader_param
    if dl.collate_param.model_name != "qwen2vl":
        raise ValueError(f"--mm-data {args.mm_data}: collate_param.model_name {dl.collate_param.model_name!r} is "
                         f"for preference training; use posttrain_qwen2vl_dpo.py with it")
    train, val = build_datasets(cfg, args.seq_length, seed=args.seed)
    from mindspeed_ms.training.vocab_check import check_token_ids
    if getattr(startup, "model", None) is not None:  # (callers that only want the data pass no model config)
        check_token_ids((train, val), startup.model.text.vocab_size, args.mm_data, args.mm_model)
    options = dict(collator_options(train, cfg)) if collator_options else {}
    if getattr(startup, "model", None) is not None:  # callers without a model config keep Qwen2-VL's layout
        options.setdefault("batch_layout", batch_layout_for(startup.model))
    collator = build_collator(cfg, args.seq_length, **options)
    return make_feed(args, cfg, train, val, collator, rank)


def batch_layout_for(model_cfg):
    """The host-side batch layout (vision keys, M-RoPE positions) of model.json's family."""
    from mindspeed_ms.models.registry import family_of
    return family_of(model_cfg).batch()(model_cfg)


def make_feed(args, cfg, train, val, collator, rank: int):
    """This rank's feed over built datasets (SFT and DPO alike): a `StreamFeed` for `streaming: true`,
    else a `DataFeed` in data.json's sample order (`data.sampler.feed_order`, steps = global batches)."""
    from mindspeed_ms.data.sampler import feed_order
    from mindspeed_ms.training.data_feed import DataFeed, StreamFeed

    common = dict(micro_batch_size=args.micro_batch_size, dp_size=args.data_parallel_size, dp_rank=rank,
                  grad_acc_steps=args.grad_acc_steps)
    packing = getattr(collator, "packing", None)
    if cfg.basic_parameters.streaming:
        if packing:
            raise ValueError(f"--mm-data {args.mm_data}: packing needs every sample's length before training, "
                             f"which a stream does not give; set streaming: false or turn packing off")
        feed = StreamFeed(train, val, collator, **common)
        if getattr(args, "num_workers", 0):
            feed.summary = (" > notice: --num-workers has no effect with streaming: true (the stream is read in "
                            "the training loop)")
        return feed
    summary = None
    if packing:
        if packing == "neat" and getattr(args, "backend", "CPU") == "Ascend" and getattr(args, "use_flash_attn", False):
            raise ValueError("neat_packing with --use-flash-attn: the causal flash attention here has no per-sample "
                             "(TND actual_seq_qlen) mask yet; drop --use-flash-attn or neat_packing")
        from mindspeed_ms.data.packing import PackedDataset
        n_samples = len(train)
        train = PackedDataset(train, args.seq_length)
        val = PackedDataset(val, args.seq_length) if val is not None else None
        summary = (f" > packing ({packing}): {n_samples} samples in {len(train)} rows of <= {args.seq_length} "
                   f"tokens ({100 * train.fill():.0f}% filled); a row counts as one sample for the batch sizes")
    gbs = args.micro_batch_size * args.data_parallel_size * args.grad_acc_steps
    dl = cfg.dataloader_param
    feed = DataFeed(len(train), lambda idx: collator([train[i] for i in idx]), seed=args.seed,
                    order=feed_order(cfg, train, args.seed, gbs),
                    val_num_samples=len(val) if val is not None else 0,
                    make_val_batch=(lambda idx: collator([val[i] for i in idx])) if val is not None else None,
                    source=f"the training set of {args.mm_data}" + (" packed into rows" if packing else ""),
                    num_workers=loader_threads(getattr(args, "num_workers", 0)),
                    prefetch_steps=dl.prefetch_factor, **common)
    feed.summary = summary
    return feed


def loader_threads(num_workers: int) -> int:
    """--num-workers -> background loading threads (`DataFeed`): at most the cores of the machine
    (MindSpeed-MM scripts pass 8 for torch's worker processes; more threads than cores only
    compete with the step). 0 keeps loading in the training loop."""
    import os
    if num_workers < 0:
        raise ValueError(f"--num-workers {num_workers}: give 0 or more")
    return min(int(num_workers), os.cpu_count() or 1)
