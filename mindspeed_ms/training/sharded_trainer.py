"""The sharded (TP/PP/VPP/CP/SP, distributed optimizer) training path of pretrain_vlm.py on Ascend.

`pretrain_vlm.py` takes it when `parallel.train_setup.uses_sharded_path` says so (Ascend with
TP/PP/CP > 1, or the distributed optimizer over dp > 1); on CPU `validate_args` has already stopped
such a layout before any compute. In order:

1. `build_sharded_feed`: this rank's mesh coordinates; the collator with one length bucket, a
   fixed patch count and ViT block count sized from the preprocessed training set, and the dp
   index (not the global rank) for the sample partition and the global vision offsets.
2. `ShardedTrainer`: the shard plan built and applied to the model (strategies, pipeline stages,
   VPP segments, recompute, GLU chunks, the tied output-layer copy) before the optimizer exists;
   the micro-batch wrapper (`Pipeline` / `GradAccumulation`); one step Cell (loss, gradients,
   `TiedGradSum`, clipping, AdamW) under `AutoParallel` (pipeline stages, interleave, `hsdp` for
   the distributed optimizer, data strategy by dp); bf16 + flash attention from --bf16
   --use-flash-attn; checkpoints written and read rank by rank in MindSpeed-MM's layout
   (`parallel.rank_checkpoint`). With `--lora-target-modules` the plan shards the adapters too, only
   they train, and the rank files hold only them (as MindSpeed-MM's LoRA checkpoints).

`dry=True` builds all of it on CPU and stops before compiling (what `tests/test_parallel_train_setup.py`
checks); nothing here has been compiled or run on Ascend yet (docs/parallel.md).
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List

import numpy as np

from mindspeed_ms.parallel.layout import ParallelConfigError
from mindspeed_ms.parallel.lazy_params import RankSource, fill_moments, fill_rank_params, lazy_init, local_key
from mindspeed_ms.parallel.rank_checkpoint import (commit, host_array, load_stage_into, rank_parts, stage_names,
                                                   to_mm_order, write_rank_parts)
from mindspeed_ms.parallel.rank_params import param_owner
from mindspeed_ms.parallel.shard_plan import LoRASpec, apply_shard_plan, build_shard_plan
from mindspeed_ms.parallel.tied_grads import tied_pairs
from mindspeed_ms.parallel.train_setup import (FLASH_KEY, SHARDED_KEYS, autoparallel_settings, collator_options,
                                               dataset_vision_counts, fixed_vision_shapes, optimizer_param_groups,
                                               rank_coords, stack_micro_batches, wrap_micro_batches)
from mindspeed_ms.training.empty_micro_batches import pad_with_empty
from mindspeed_ms.training.trainer import Trainer, TrainingError

_RANKS = {"input_ids": 2, "attention_mask": 2, "position_ids": 3, "pixel_values": 2, "vision_pos_ids": 2,
          "vision_segment_ids": 1, "vision_gather_index": 2, "vision_token_mask": 2, "labels": 2,
          "loss_weights": 2, "ref_logps": 1, FLASH_KEY: 1}


def uses_flash(args, backend: str) -> bool:
    """The flash path needs both flags (bf16 FlashAttentionScore); the plan and the model agree on it."""
    return (backend or "").upper() == "ASCEND" and bool(args.bf16) and bool(args.use_flash_attn)


def build_sharded_feed(args, startup, rank: int, backend: str = "Ascend"):
    """This rank's data feed for the sharded step (see the module docstring)."""
    from mindspeed_ms.training.build import build_feed
    cfg = startup.parallel
    coords = rank_coords(rank, cfg)
    merge = startup.model.vision.spatial_merge_size
    flash = uses_flash(args, backend)

    def options(train, data_cfg):
        patches, blocks = dataset_vision_counts(train, data_cfg, args.seq_length, merge)
        n, k = fixed_vision_shapes(patches, blocks, args.micro_batch_size, merge)
        return collator_options(cfg, coords, args.seq_length, n, k if flash else None)

    return build_feed(args, startup, coords.dp, collator_options=options)


class _CompileCount:
    def __init__(self, cell):
        self.cell = cell

    @property
    def compilations(self) -> int:
        return len(getattr(self.cell, "compile_cache", ()))


class ShardedTrainer(Trainer):
    """Trainer whose step is the AutoParallel-wrapped `ShardedTrainStep`; `dry` stops before compiling."""

    def __init__(self, args, startup, rank: int, world: int, logger, model, feed, backend: str = "Ascend",
                 dry: bool = False, lazy: bool = False, lora=None):
        """`lazy`: `model` was built under `parallel.lazy_params.lazy_init()` (no weights allocated);
        the rank then allocates and fills only its own slices (`lora`: the LoRA session, whose base
        checkpoint gives the base slices)."""
        self.backend, self.dry, self.lazy, self.lora_session = backend, dry, lazy, lora
        self.args = args
        self._sources = {}
        self._pending_moments = None
        self.fill_report = {}
        self.pcfg = startup.parallel
        self.coords = rank_coords(rank, self.pcfg)
        flash = uses_flash(args, backend)
        lora = LoRASpec(tuple(args.lora_target_modules), args.lora_r, args.lora_dropout) \
            if args.lora_target_modules else None
        self.plan = build_shard_plan(startup.model, self.pcfg, backend, bf16=flash, lora=lora)
        # before the optimizer: the plan may add the tied output-layer copy (a new parameter)
        try:
            apply_shard_plan(model.network, self.plan)
        except ParallelConfigError as e:
            raise TrainingError(str(e)) from None
        self.keys = self._step_keys() + ((FLASH_KEY,) if flash else ())
        if lazy and dry:
            # dry mode: the plan gives the slice shapes (on Ascend the compiled network does, first step)
            self._fill_lazy(model.network, compiled=False)
        super().__init__(args, startup, rank, world, logger, model, feed)
        self.dynamic_shapes = False          # one static graph: the collator has a single bucket
        logger.print(f" > sharded run: tp {self.pcfg.tp} pp {self.pcfg.pp} vpp {self.pcfg.vpp} cp {self.pcfg.cp} "
                     f"dp {self.pcfg.dp}, rank {rank} = stage {self.coords.pp} dp {self.coords.dp} cp {self.coords.cp} "
                     f"tp {self.coords.tp}; {self.settings.micro_size} micro-batch(es) per step"
                     + (", distributed optimizer" if self.pcfg.use_distributed_optimizer else "")
                     + (", bf16 flash attention" if flash else ""))

    def _build_steps(self):
        from contextlib import nullcontext
        # lazy: the AdamW moments and the pipeline's gradient accumulators are not allocated either
        with lazy_init() if self.lazy else nullcontext():
            self._build_step_cells()
        if self.lazy and self.dry:
            fill_moments(self.optimizer, set(self.own_names()), None)

    def _build_step_cells(self):
        from mindspeed_ms.training.optimizer import AdamW
        from mindspeed_ms.training.sharded_step import ShardedForward, ShardedTrainStep
        args = self.args
        self.loss_cell = self._loss_network()
        self.settings = autoparallel_settings(self.plan, [_RANKS[k] for k in self.keys], prefix="network")
        net = wrap_micro_batches(self.loss_cell, self.settings)
        self.optimizer = AdamW(self.trainable, args.adam_beta1, args.adam_beta2, args.adam_eps, args.weight_decay)
        self.param_groups = optimizer_param_groups(self.trainable)
        self.tied = tied_pairs(self.trainable, self.startup.model.text.tied)
        self.step_cell = ShardedTrainStep(net, self.trainable, self.optimizer, args.clip_grad, self.tied,
                                          pipeline=self.pcfg.pp > 1)
        self.forward_cell = ShardedForward(net)
        # AutoParallel objects are built in the dry run too (MindSpore checks the arguments); only their
        # compilation needs Ascend
        self.train_net = self.settings.apply(self.step_cell)
        self.eval_net = self.settings.apply(self.forward_cell)
        self.micro, self.forward = _CompileCount(self.train_net), _CompileCount(self.eval_net)

    # ---- what the step computes (the DPO trainer, rl/sharded_dpo.py, overrides these) --------------
    def _step_keys(self):
        """The batch keys of the step Cell's inputs, in its positional order (without the flash key)."""
        return SHARDED_KEYS

    def _loss_network(self):
        """The Cell whose scalar output the step differentiates (under the micro-batch wrapper)."""
        from mindspeed_ms.training.sharded_step import ShardedLossCell
        return ShardedLossCell(self.model.network)

    # ---- lazy parameters (parallel/lazy_params.py) ---------------------------------------------------
    def own_names(self, params=None):
        """Names of this rank's stage among `params` (default: the model's parameters)."""
        params = params if params is not None else {p.name: p for p in self.model.network.get_parameters()}
        return stage_names(self.plan, self.coords.pp, params)

    def _source(self, root):
        if root not in self._sources:
            try:
                self._sources[root] = RankSource(root, self.plan, self.coords.tp, self.coords.pp)
            except (ValueError, OSError) as e:
                raise TrainingError(f"{root}: {e}") from None
        return self._sources[root]

    def _weight_sources(self, names):
        """name -> RankSource for the parameters of `names` that a checkpoint provides."""
        args, lora = self.args, self.lora_session
        if lora is not None:
            from mindspeed_ms.peft.lora_merge import is_lora_name
            base = [n for n in names if not is_lora_name(n)]
            groups = [(lora.base_dir, base, "--load-base-model" if args.load_base_model else "--load")]
            if lora.resume_from_load:
                groups.append((args.load, [n for n in names if is_lora_name(n)], "--load"))
        else:
            groups = [(args.load, list(names), "--load")]
        out = {}
        for root, group, flag in groups:
            if not root or not group:
                continue
            src = self._source(root)
            missing = [n for n in group if n not in src]
            if missing:
                raise TrainingError(f"{flag} {root}: stage {self.coords.pp} lacks {len(missing)} parameters of the "
                                    f"model (first: {', '.join(missing[:3])}); check model.json against the checkpoint")
            out.update({n: src for n in group})
        return out

    def _fill_lazy(self, network, compiled: bool):
        """Allocate this rank's slices and fill them from the checkpoints (or a fresh init)."""
        params = {p.name: p for p in network.get_parameters()}
        names = stage_names(self.plan, self.coords.pp, params)
        try:
            self.fill_report = fill_rank_params(params, self.plan, self.coords.tp, self.coords.pp,
                                                self._weight_sources(names), self.args.seed, compiled)
        except ValueError as e:
            raise TrainingError(str(e)) from None

    def _materialize_compiled(self, tensors):
        """Ascend, lazy: compile (MindSpore sets every parameter's slice shape), then fill the slices."""
        if not self.lazy or getattr(self, "_materialized", False):
            return
        self.train_net.compile(*tensors)
        self._fill_lazy(self.model.network, compiled=True)
        try:
            fill_moments(self.optimizer, set(self.own_names()), self._pending_moments)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        self._materialized = True

    def _check_not_dry(self, what):
        if self.dry:
            raise TrainingError(f"{what}: this trainer was built in dry mode (CPU), which stops before compiling")

    # ---- steps ---------------------------------------------------------------------------------
    def _world_sum(self, values: List[float]) -> np.ndarray:
        """Sum over the dp ranks: every rank of one dp index holds the same data, so the world sum is
        (world / dp) times the dp sum."""
        x = np.asarray(values, np.float64)
        if self.world == 1:
            return x
        total = self.allreduce(self.ms.Tensor(x.astype(np.float32))).asnumpy().astype(np.float64)
        return total / (self.world // self.dp)

    def _global_valid_tokens(self, micro_batches):
        from mindspeed_ms.training.loss_weights import count_valid_tokens
        if self.args.loss_mode != "per_token":
            return None
        return int(round(float(self._world_sum([sum(count_valid_tokens(mb["labels"]) for mb in micro_batches)])[0])))

    def step_inputs(self, micro_batches: List[Dict]) -> List[np.ndarray]:
        """The step's inputs (loss weights included) for this rank's micro-batches of one step."""
        if len(micro_batches) != self.ga:
            raise TrainingError(f"the data feed gave {len(micro_batches)} micro-batches, expected {self.ga}")
        self._weights(micro_batches, self._global_valid_tokens(micro_batches))
        # pp > 1 with fewer micro-batches than stages: empty ones fill the pipeline
        return stack_micro_batches(pad_with_empty(micro_batches, self.settings.micro_size), self.keys)

    def _micro_batches_per_step(self) -> int:
        return self.pcfg.pipeline_micro_batches

    def _dp_mean(self, value: float) -> float:
        return float(self._world_sum([value])[0]) / self.dp

    def _reports_memory(self) -> bool:
        return self.coords.dp == 0          # Megatron: every rank of data-parallel index 0

    def train_step(self, micro_batches: List[Dict]):
        inputs = self.step_inputs(micro_batches)
        self._check_not_dry("train_step")
        ms = self.ms
        lr = self.schedule.get_lr()
        self.step_cell.set_hyper(self.optimizer.host_scalars(lr))
        tensors = [ms.Tensor(x) for x in inputs]
        self._materialize_compiled(tensors)
        loss, norm = self.train_net(*tensors)
        self.optimizer.step += 1
        self.schedule.step(self.gbs)
        self.iteration += 1
        self.consumed += self.gbs
        tokens = self._world_sum([sum(float(np.count_nonzero(mb["attention_mask"])) for mb in micro_batches)])[0]
        return float(loss.asnumpy()), float(norm.asnumpy()), lr, tokens / self.gbs

    def _validation_loss(self):
        self._check_not_dry("evaluate")
        total, steps = 0.0, 0
        for micro_batches in self.feed.val_steps(self.args.eval_iters):
            inputs = self.step_inputs(micro_batches)
            total += float(self.eval_net(*[self.ms.Tensor(x) for x in inputs]).asnumpy())
            steps += 1
        return total / steps if steps else None

    # ---- checkpoints ---------------------------------------------------------------------------
    @property
    def writes_checkpoint(self) -> bool:
        """One writer per (tp, stage): the ranks with dp index 0 and cp index 0."""
        return self.coords.dp == 0 and self.coords.cp == 0

    def _merged_arrays(self) -> Dict[str, np.ndarray]:
        """This stage's parameters and AdamW moments (`exp_avg.<name>`, `exp_avg_sq.<name>`), merged
        over tp. Dry run: the parameters are whole on CPU. Ascend: MindSpore's integrated save
        gathers the tp (and optimizer-shard) slices of each parameter."""
        mine = set(stage_names(self.plan, self.coords.pp, self.saved_params))
        opt = {}
        for p, m, v in zip(self.optimizer.params, self.optimizer.exp_avg, self.optimizer.exp_avg_sq):
            if p.name in mine:
                opt[m.name], opt[v.name] = m, v
        if self.dry:
            arrays = {n: p.asnumpy() for n, p in self.saved_params.items() if n in mine}
            arrays.update({n: p.asnumpy() for n, p in opt.items()})
            return arrays
        import mindspore as ms
        with tempfile.TemporaryDirectory(dir=self.args.save) as tmp:
            path = os.path.join(tmp, f"rank{self.rank}.safetensors")
            ms.save_checkpoint(self.train_net, path, integrated_save=True, format="safetensors")
            loaded = ms.load_checkpoint(path, format="safetensors")
        wanted = mine | set(opt)
        return {n: p.asnumpy() for n, p in loaded.items() if n in wanted}

    def _own_slice_contents(self):
        """Lazy dry run: the rank holds its slices, which are exactly its file's tensors."""
        owner = param_owner(self.plan)
        vpp = self.pcfg.vpp
        keys = ["model"] if vpp == 1 else [f"model{v}" for v in range(vpp)]

        def parts(named):
            out = {k: {} for k in keys}
            for n, arr in named.items():
                _, v, local = local_key(self.plan, n, owner)
                out[keys[v]][local] = host_array(arr)
            return out
        mine = set(stage_names(self.plan, self.coords.pp, self.saved_params))
        model = parts({n: p.asnumpy() for n, p in self.saved_params.items() if n in mine})
        optim = {"step": self.optimizer.step}
        for k, ms_ in (("exp_avg", self.optimizer.exp_avg), ("exp_avg_sq", self.optimizer.exp_avg_sq)):
            optim[k] = parts({p.name: m.asnumpy() for p, m in zip(self.optimizer.params, ms_) if p.name in mine})
        return model, optim

    def rank_file_contents(self):
        """(model parts as mm-convert writes them for this rank, optimizer entry with the moments cut
        the same way)."""
        if self.lazy and self.dry:
            return self._own_slice_contents()
        tp = self.pcfg.tp
        arrays = self._merged_arrays()
        mine = stage_names(self.plan, self.coords.pp, self.saved_params)
        model = rank_parts(to_mm_order({n: arrays[n] for n in mine}, tp), self.plan, self.coords.tp, self.coords.pp)
        moments = {k: to_mm_order({n: arrays[f"{k}.{n}"] for n in mine if f"{k}.{n}" in arrays}, tp)
                   for k in ("exp_avg", "exp_avg_sq")}
        optim = {"step": self.optimizer.step,
                 **{k: rank_parts(m, self.plan, self.coords.tp, self.coords.pp) for k, m in moments.items()}}
        return model, optim

    def write_rank_checkpoint(self) -> str:
        """This rank's file of the current iteration, into the shared temporary directory."""
        from mindspeed_ms.training.rng_state import get_rng_state
        args = self.args
        model, optim = self.rank_file_contents()
        extra = {"iteration": int(self.iteration),
                 "args": {"micro_batch_size": args.micro_batch_size, "global_batch_size": self.gbs,
                          "seed": args.seed, "data_parallel_size": self.dp,
                          "tensor_model_parallel_size": self.pcfg.tp,
                          "pipeline_model_parallel_size": self.pcfg.pp, **self.checkpoint_meta}}
        if not args.no_save_optim:
            extra["optimizer"] = optim
            extra["opt_param_scheduler"] = self.schedule.state_dict()
        if not args.no_save_rng:
            extra["rng_state"] = get_rng_state()
        sampler = self.feed.state_dict()
        sampler["consumed_samples"] = self.consumed
        extra["data_sampler"] = sampler
        return write_rank_parts(args.save, self.iteration, self.plan, self.coords.tp, self.coords.pp, model,
                                args.ckpt_format, extra)

    def save(self):
        t0 = time.time()
        if self.writes_checkpoint:
            self.write_rank_checkpoint()
        self._barrier()
        if self.rank == 0:
            from mindspeed_ms.checkpoint.layout import LayoutDirError
            try:
                path = commit(self.args.save, self.iteration, self.plan)
            except LayoutDirError as e:     # e.g. --save not shared between nodes (docs/multinode.md)
                raise TrainingError(f"{e}; with several nodes --save must be a shared filesystem "
                                    f"(docs/multinode.md)") from None
            self.log.print(f"  successfully saved checkpoint at iteration {self.iteration:7d} to {path} "
                           f"[ {time.time() - t0:.2f}s ]")
        self._barrier()

    def _barrier(self):
        if self.world > 1 and not self.dry:
            from mindspore.communication.comm_func import barrier
            barrier()

    def load(self):
        if self.lazy:
            return self._load_lazy()
        from mindspeed_ms.training.rng_state import set_rng_state
        ms, args = self.ms, self.args

        def set_array(p, arr):
            p.set_data(ms.Tensor(np.asarray(arr, np.float32)).astype(p.dtype))

        try:
            ck = load_stage_into(self.saved_params, self.plan, self.coords.pp, args.load, set_array)
        except (ValueError, OSError) as e:
            raise TrainingError(f"--load {args.load}: {e}") from None
        release = ck["tag"] == "release"
        how = "this stage's rank files" if ck["stage_only"] else "the merged checkpoint (another tp x pp layout)"
        if args.finetune or release:
            self.log.print(f" > loaded stage {self.coords.pp} weights of {args.load} ({how}); starting at iteration 0")
            return
        self.iteration = int(ck.get("iteration", ck["tag"]))
        self._restore_data_position(ck)
        if not args.no_load_optim:
            opt = ck.get("optimizer")
            if not (isinstance(opt, dict) and "exp_avg" in opt) or "opt_param_scheduler" not in ck:
                raise TrainingError(f"--load {args.load}: iteration {self.iteration} has no optimizer state for "
                                    f"this layout's stage {self.coords.pp} (saved with --no-save-optim or with "
                                    f"another tp x pp layout); add --no-load-optim")
            from mindspeed_ms.parallel.rank_params import to_plan_layout
            for p, m, v in zip(self.optimizer.params, self.optimizer.exp_avg, self.optimizer.exp_avg_sq):
                if p.name in opt["exp_avg"]:
                    set_array(m, to_plan_layout(p.name, opt["exp_avg"][p.name], self.pcfg.tp))
                    set_array(v, to_plan_layout(p.name, opt["exp_avg_sq"][p.name], self.pcfg.tp))
            self.optimizer.step = int(opt["step"])
            self.schedule.load_state_dict(ck["opt_param_scheduler"])
        else:
            self.schedule.num_steps = float(self.consumed)
        if not args.no_load_rng and "rng_state" in ck:
            set_rng_state(ck["rng_state"])
        self.log.print(f" > resumed stage {self.coords.pp} from {args.load} at iteration {self.iteration}")


    def _load_lazy(self):
        """Lazy run: the weights were (dry) or will be (Ascend, after compiling) filled from this
        rank's source; here the iteration, data position, moments, scheduler and rng."""
        from mindspeed_ms.training.rng_state import set_rng_state
        args = self.args
        src = self._source(args.load)
        ex = src.extras
        how = "its own rank file" if src.own_file else "the merged checkpoint (another tp x pp layout)"
        if args.finetune or src.tag == "release":
            self.log.print(f" > rank {self.rank} (stage {self.coords.pp}, tp {self.coords.tp}) loads its slices of "
                           f"{args.load} from {how}; starting at iteration 0")
            return
        self.iteration = int(ex.get("iteration", src.tag))
        self._restore_data_position(ex)
        if not args.no_load_optim:
            moments = src.moments()
            if moments is None or "opt_param_scheduler" not in ex:
                raise TrainingError(f"--load {args.load}: iteration {self.iteration} has no optimizer state for "
                                    f"this layout's rank (tp {self.coords.tp}, stage {self.coords.pp}) (saved with "
                                    f"--no-save-optim or with another tp x pp layout); add --no-load-optim")
            self._pending_moments = moments
            if self.dry:
                try:
                    fill_moments(self.optimizer, set(self.own_names()), moments)
                except ValueError as e:
                    raise TrainingError(str(e)) from None
            self.optimizer.step = int(moments["step"])
            self.schedule.load_state_dict(ex["opt_param_scheduler"])
        else:
            self.schedule.num_steps = float(self.consumed)
        if not args.no_load_rng and "rng_state" in ex:
            set_rng_state(ex["rng_state"])
        self.log.print(f" > resumed rank {self.rank} (stage {self.coords.pp}, tp {self.coords.tp}) from {args.load} "
                       f"at iteration {self.iteration} ({how})")


def build_sharded_model(startup, args, backend: str, logger, lazy: bool = True):
    """The model for the sharded path: built without allocating its weights (lazy), LoRA adapters on
    (their base is loaded later, slice by slice). Returns (model, LoRA session or None)."""
    from contextlib import nullcontext
    from mindspeed_ms.peft.lora_training import attach_lora
    from mindspeed_ms.training.build import build_model
    with lazy_init() if lazy else nullcontext():
        model = build_model(startup.model, args, backend)
    lora = attach_lora(model, args, logger, plan_tp=startup.parallel.tp, load_base=not lazy)
    return model, lora


def dry_run(argv, rank: int, world: int, logger=None, lazy: bool = False) -> ShardedTrainer:
    """The Ascend sharded path of pretrain_vlm.py, built on this machine up to (not including)
    compilation: flags, files, layout, feed, model, plan, step Cells, AutoParallel settings."""
    from mindspeed_ms.arguments import parse_args, validate_args
    from mindspeed_ms.training.train_log import TrainLogger
    args = parse_args(argv)
    startup = validate_args(args, world_size=world, backend="Ascend")
    feed = build_sharded_feed(args, startup, rank)
    logger = logger or TrainLogger(args.train_iters, False)
    model, lora = build_sharded_model(startup, args, "Ascend", logger, lazy=lazy)
    trainer = ShardedTrainer(args, startup, rank, world, logger, model, feed, backend="Ascend", dry=True, lazy=lazy,
                             lora=lora)
    if lora is not None:
        lora.bind(trainer)
    return trainer
