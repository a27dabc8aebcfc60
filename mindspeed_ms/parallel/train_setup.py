"""What a sharded (semi-auto parallel) training run needs besides the shard plan: where each rank
sits in the device mesh, the fixed batch shapes every rank must share, the micro-batch wrapper,
the `AutoParallel` settings, and the compiled training step.

Everything here is built on CPU too (the dry mode of `training.sharded_trainer`); only compiling and
running the step needs Ascend (`AutoParallel` fails with "Invalid backend: CPU" at compile time).

Rank order (Megatron's, and what MindSpore's device matrices give): tp varies fastest, then cp,
then dp, then the pipeline stage. MindSpore puts the devices of stage s at ranks
[s * world/pp, (s+1) * world/pp); inside a stage, a strategy like ((dp*cp, 1), (tp, 1)) arranges
the devices as [dp*cp, tp] and a data strategy (dp, 1) leaves the tp x cp repeats on the right
of the device matrix (MindSpore's default), so all tp x cp ranks of one dp index read the same data.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mindspeed_ms.parallel.config import ParallelConfig
from mindspeed_ms.parallel.layout import ParallelConfigError
from mindspeed_ms.parallel.shard_plan import ShardPlan, stage_config

# batch keys of the sharded step, in the loss cell's positional order (the batch contract plus the
# flash ViT's block ends); position_ids travel batch-first ([B, 3, S]) so that MindSpore's
# micro-batch slicing, which cuts every input along axis 0, cuts them by sample
SHARDED_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision_pos_ids",
                "vision_segment_ids", "vision_gather_index", "vision_token_mask", "labels", "loss_weights")
FLASH_KEY = "vision_cu_seqlens"


@dataclass(frozen=True)
class RankCoords:
    rank: int
    pp: int
    dp: int
    cp: int
    tp: int


def rank_coords(rank: int, cfg: ParallelConfig) -> RankCoords:
    """This rank's (pipeline stage, data-parallel index, cp index, tp index)."""
    if not 0 <= rank < cfg.world_size:
        raise ParallelConfigError(f"rank {rank} is outside the world of {cfg.world_size} devices")
    per_stage = cfg.world_size // cfg.pp
    pp, r = divmod(rank, per_stage)
    dp, r = divmod(r, cfg.cp * cfg.tp)
    cp, tp = divmod(r, cfg.tp)
    return RankCoords(rank, pp, dp, cp, tp)


def uses_sharded_path(cfg: ParallelConfig, backend: str) -> bool:
    """Semi-auto parallel is needed for TP/PP/CP > 1, and for the distributed optimizer with dp > 1
    (MindSpore's parallel optimizer); plain data parallel keeps the CPU-capable step."""
    if (backend or "").upper() not in ("ASCEND", "GPU"):
        return False
    return cfg.is_parallel() or (cfg.use_distributed_optimizer and cfg.dp > 1)


# ---- fixed batch shapes ------------------------------------------------------------------------

def fixed_vision_shapes(patches_per_sample: Sequence[int], blocks_per_sample: Sequence[int],
                        micro_batch_size: int, merge_size: int = 2) -> Tuple[int, int]:
    """(num_patches, vision_segments) that fit every micro-batch of `micro_batch_size` samples.

    Under semi-auto parallel the dp ranks' patches are one ViT sequence, so every rank and step
    needs the same patch count N and block count K. N bounds the most patches a micro-batch can
    hold (the largest samples together, at least the 4-patch dummy image) plus K, so that the
    padding can always be cut into the blocks that reach K (`inputs.vision_cu_seqlens` needs
    padding >= missing blocks + 1); K = most real blocks + the padding block."""
    if not len(patches_per_sample):
        raise ParallelConfigError("the training set is empty: no sample to size the fixed vision shapes from")
    m2 = merge_size ** 2
    top = lambda xs: int(sum(sorted(xs, reverse=True)[:micro_batch_size]))  # noqa: E731
    real_patches = max(top(patches_per_sample), m2)           # a batch without images carries a dummy one
    segments = max(top(blocks_per_sample), 1) + 1
    n = -(-(real_patches + segments) // m2) * m2
    return n, segments


def dataset_vision_counts(train, data_cfg, seq_length: int, merge_size: int = 2) -> Tuple[List[int], List[int]]:
    """Per-sample (patches, ViT blocks) of the preprocessed training set, from the token counts the
    preprocessing recorded (no pixels are decoded). A video's blocks are its frames / temporal patch
    (at most video_maxlen / 2, and at most its merged tokens). A streamed set cannot be scanned: its
    bound is the sequence itself (every position a vision token, one block each)."""
    m2 = merge_size ** 2
    rows = getattr(train, "rows", None)
    if rows is None or not hasattr(rows, "column_names"):
        return [seq_length * m2], [seq_length]
    max_frames = max(1, int(getattr(data_cfg.preprocess_parameters, "video_maxlen", 0) or 0) // 2)
    patches, blocks = [], []
    for img, vid in zip(rows["image_tokens"], rows["video_tokens"]):
        img, vid = list(img or []), list(vid or [])
        patches.append((sum(img) + sum(vid)) * m2)
        blocks.append(len(img) + sum(min(t, max_frames) for t in vid))
    return patches, blocks


def collator_options(cfg: ParallelConfig, coords: RankCoords, seq_length: int, num_patches: int,
                     vision_segments: Optional[int]) -> Dict:
    """Qwen2VLCollator keyword arguments for this rank: one length bucket (the padded --seq-length,
    a multiple of 8 and of the CP/SP sequence split), the fixed patch count, the flash ViT's block
    count, and the dp index whose offsets make the vision keys global."""
    step = int(np.lcm(8, cfg.seq_split))
    seq = -(-cfg.padded_seq_length(seq_length) // step) * step
    opts = {"buckets": [seq], "num_patches": int(num_patches), "dp_rank": coords.dp}
    if vision_segments is not None:
        opts["vision_segments"] = int(vision_segments)
    return opts


def stack_micro_batches(micro_batches: Sequence[Dict], keys: Sequence[str]) -> List[np.ndarray]:
    """One step's micro-batches as the sharded step's inputs: every key concatenated along axis 0
    (micro-batch i is slice i of each input, as MindSpore's micro-batch cells cut them), with
    position_ids turned batch-first."""
    out = []
    for k in keys:
        parts = [np.asarray(mb[k]) for mb in micro_batches]
        if k == "position_ids":
            parts = [np.transpose(p, (1, 0, 2)) for p in parts]
        out.append(np.ascontiguousarray(np.concatenate(parts, axis=0)))
    return out


# ---- AutoParallel settings ------------------------------------------------------------------------

@dataclass
class AutoParallelSettings:
    """The calls made on `mindspore.parallel.auto_parallel.AutoParallel` (MindSpore 2.10's form of
    `set_auto_parallel_context`), recorded so a CPU dry run can check them."""
    parallel_mode: str = "sharding_propagation"
    dataset_strategy: Tuple[Tuple[int, ...], ...] = ()
    pipeline: Optional[Dict] = None          # AutoParallel.pipeline(**kwargs) when pp > 1
    hsdp: Optional[Dict] = None              # AutoParallel.hsdp(**kwargs) for the distributed optimizer
    micro_wrapper: Optional[str] = None      # "Pipeline" | "GradAccumulation" | None
    micro_size: int = 1
    stage_config: Dict[str, int] = field(default_factory=dict)
    segment_config: Dict[str, int] = field(default_factory=dict)

    def apply(self, network):
        """Wrap `network` (the training-step Cell) in AutoParallel with these settings."""
        from mindspore.parallel.auto_parallel import AutoParallel
        par = AutoParallel(network, parallel_mode=self.parallel_mode)
        par.dataset_strategy(self.dataset_strategy)
        if self.pipeline is not None:
            par.pipeline(**self.pipeline)
        if self.hsdp is not None:
            par.hsdp(**self.hsdp)
        return par


def autoparallel_settings(plan: ShardPlan, input_ranks: Sequence[int], prefix: str = "") -> AutoParallelSettings:
    """Settings for the plan's layout. `input_ranks`: the number of dims of each step input (their
    batch axis is split by dp, the rest whole). `prefix`: the path of the model inside the network
    that the micro-batch wrapper wraps (for its stage/segment configs)."""
    cfg = plan.cfg
    s = AutoParallelSettings(dataset_strategy=tuple((cfg.dp,) + (1,) * (n - 1) for n in input_ranks))
    s.micro_size = cfg.pipeline_micro_batches
    if cfg.pp > 1:
        stages, segments = stage_config(plan)
        pre = f"{prefix}." if prefix else ""
        s.micro_wrapper = "Pipeline"
        s.stage_config = {pre + k: v for k, v in stages.items()}
        s.segment_config = {pre + k: v for k, v in segments.items()}
        s.pipeline = {"stages": cfg.pp, "interleave": cfg.vpp > 1, "scheduler": "1f1b"}
    elif s.micro_size > 1:
        s.micro_wrapper = "GradAccumulation"
    if cfg.use_distributed_optimizer:
        # Megatron's distributed optimizer: optimizer states (and the fp32 master copy) sharded
        # over each parameter's data-parallel group
        s.hsdp = {"shard_size": -1, "threshold": 64, "optimizer_level": "level1"}
    return s


def wrap_micro_batches(net, settings: AutoParallelSettings):
    """The loss network under MindSpore's micro-batch wrapper: `Pipeline` (stages from the plan,
    interleaved segments with VPP) or `GradAccumulation` (pp 1, several micro-batches)."""
    if settings.micro_wrapper == "Pipeline":
        from mindspore.parallel.nn import Pipeline
        return Pipeline(net, settings.micro_size, stage_config=settings.stage_config,
                        segment_config=settings.segment_config or None)
    if settings.micro_wrapper == "GradAccumulation":
        from mindspore.parallel.nn import GradAccumulation
        return GradAccumulation(net, settings.micro_size)
    return net


def optimizer_param_groups(params) -> Dict[str, List[str]]:
    """Megatron's groups as the optimizer applies them: weight decay / none (biases, 1-D)."""
    from mindspeed_ms.training.optimizer import uses_weight_decay
    groups = {"decay": [], "no_decay": []}
    for p in params:
        groups["decay" if uses_weight_decay(p.name, p) else "no_decay"].append(p.name)
    return groups
