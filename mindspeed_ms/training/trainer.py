"""The training loop behind pretrain_vlm.py (its entry point: training/pretrain.py).

Order of things: parse and validate everything (flags, data.json, model.json, parallel layout,
--load) before any compute; then initialise the communication (msrun workers become DP ranks),
build the model, freeze, load, compile per shape bucket, and train:

    for each iteration: GA micro-batches -> MicroStep (forward + backward, grads accumulated)
                        -> OptimizerStep (AllReduce over DP, clip, AdamW) -> lr schedule
                        -> log / evaluate / save
    (GA 1: one TrainStep graph does forward, backward, AllReduce, clip and AdamW)
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Optional

import numpy as np

from mindspeed_ms.arguments import Startup, TrainingArgs
from mindspeed_ms.training.empty_micro_batches import pad_with_empty
from mindspeed_ms.training.loss_weights import count_valid_tokens, make_loss_weights
from mindspeed_ms.training.lr_schedule import LRSchedule
from mindspeed_ms.training.memory_report import memory_stats
from mindspeed_ms.training.train_log import TrainLogger, Window


class TrainingError(RuntimeError):
    pass


def padded_tokens_per_sample(micro_batches: List[Dict]) -> float:
    """This rank's mean over the step's micro-batches of the sequence length the language model
    sees (the collator's padded length; MindSpeed-MM's `get_tps` reads it off the logits)."""
    lengths = [np.asarray(mb["input_ids"]).shape[-1] for mb in micro_batches if "input_ids" in mb]
    return float(np.mean(lengths)) if lengths else 0.0


def _frozen_prefixes(model_cfg) -> List[str]:
    """model.json `freeze: true` -> parameter-name prefixes that get no gradient (MM names)."""
    out = []
    if model_cfg.vision.freeze:
        out.append("image_encoder.encoder.")
    if model_cfg.projector.freeze:
        out.append("image_encoder.projector.")
    if getattr(model_cfg.text, "freeze", False):
        out.append("text_decoder.")
    return out


def load_model_state(named_params: Dict, state: Dict[str, np.ndarray], source: str, strict: bool = True):
    """Copy a checkpoint's `model` dict into the parameters (by MM name), checking names and shapes."""
    import mindspore as ms
    missing = [n for n in named_params if n not in state]
    unexpected = [n for n in state if n not in named_params]
    # tied embeddings: mm-convert copies word_embeddings into output_layer when PP > 1
    unexpected = [n for n in unexpected if n != "text_decoder.output_layer.weight"]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameters are missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} are not in the model (first: {', '.join(unexpected[:3])})")
        raise TrainingError(f"{source} does not fit the model of --mm-model: {'; '.join(parts)}. Check that "
                            f"model.json is the one the checkpoint was converted for.")
    for name, p in named_params.items():
        if name not in state:
            continue
        arr = np.asarray(state[name])
        if tuple(arr.shape) != tuple(p.shape):
            raise TrainingError(f"{source}: {name} has shape {tuple(arr.shape)}, the model built from --mm-model "
                                f"expects {tuple(p.shape)}; check model.json against the checkpoint.")
        p.set_data(ms.Tensor(arr.astype(np.float32)).astype(p.dtype))


class Trainer:
    whole_step = False      # True: TrainStep (GA 1) instead of MicroStep + OptimizerStep

    def __init__(self, args: TrainingArgs, startup: Startup, rank: int, world: int, logger: TrainLogger,
                 model, feed):
        import mindspore as ms
        from mindspore import ParameterTuple

        self.args, self.startup, self.rank, self.world, self.log = args, startup, rank, world, logger
        self.dp, self.ga, self.gbs = args.data_parallel_size, args.grad_acc_steps, args.global_batch_size
        self.model, self.feed = model, feed
        # the loss cell wraps the model with auto_prefix=False: parameter names are the MM names
        self.named_params = {p.name: p for p in model.get_parameters()}
        # what checkpoints hold and --load restores; LoRA narrows it to the adapters (peft.lora_training)
        self.saved_params = self.named_params
        self.checkpoint_meta = {}
        frozen = _frozen_prefixes(startup.model)
        for name, p in self.named_params.items():
            if any(name.startswith(pre) for pre in frozen):
                p.requires_grad = False
        self.trainable = [p for p in self.named_params.values() if p.requires_grad]
        if not self.trainable and not args.enable_dummy_optimizer:
            raise TrainingError("every parameter is frozen (model.json freeze flags): there is nothing to train; "
                                "unfreeze a module or pass --enable-dummy-optimizer to run without updates")
        n_train = sum(int(np.prod(p.shape)) for p in self.trainable)
        n_all = sum(int(np.prod(p.shape)) for p in self.named_params.values())
        logger.print(f" > parameters: {n_all:,} total, {n_train:,} trainable"
                     + (f" (frozen: {', '.join(p.rstrip('.') for p in frozen)})" if frozen else ""))
        if getattr(feed, "summary", None):
            logger.print(feed.summary)
        self.step_micro_batches = self._micro_batches_per_step()
        self._build_steps()
        self.schedule = LRSchedule.from_args(args)
        # CPU: one graph with dynamic batch/sequence/patch dimensions (compiles once; measured ~20 s for
        # the tiny model instead of ~35 s per bucket). Ascend: one static graph per collator bucket,
        # the safer choice for its kernels and for semi-auto parallel.
        self.dynamic_shapes = args.backend != "Ascend"
        self._inputs_declared = False
        self.iteration = 0
        self.consumed = 0
        self.ms = ms
        if self.dp > 1:
            from mindspeed_ms.training.train_step import AllReduceSum
            self.allreduce = AllReduceSum()

    def _micro_batches_per_step(self) -> int:
        """Micro-batches one step runs: the real ones (GA); more only where the step needs padding
        with empty ones (`empty_micro_batches`; the sharded pipeline with fewer than pp)."""
        return self.ga

    def _build_steps(self):
        """Optimizer and compiled step Cells (the sharded Ascend trainer builds its own)."""
        from mindspeed_ms.training.optimizer import AdamW
        from mindspeed_ms.training.train_step import (ForwardOnly, MicroStep, OptimizerStep, TrainStep,
                                                      make_accumulators)
        args = self.args
        self.optimizer = AdamW(self.trainable, args.adam_beta1, args.adam_beta2, args.adam_eps, args.weight_decay)
        # one micro-batch per step: one graph for the whole step, no accumulation buffers
        self.whole_step = self.step_micro_batches == 1
        if self.whole_step:
            self.micro = TrainStep(self.model, self.trainable, self.optimizer, args.clip_grad, self.dp)
        else:
            self.accum = make_accumulators(self.trainable)
            self.micro = MicroStep(self.model, self.trainable, self.accum)
            self.opt_step = OptimizerStep(self.accum, self.optimizer, args.clip_grad, self.dp)
        self.forward = ForwardOnly(self.model)

    # ---- checkpoints ---------------------------------------------------------------------------
    def load(self):
        from mindspeed_ms.training.checkpointing import CheckpointLoadError, load_checkpoint
        from mindspeed_ms.training.rng_state import set_rng_state
        args = self.args
        try:
            ck = load_checkpoint(args.load)
        except (CheckpointLoadError, ValueError) as e:
            raise TrainingError(f"--load {args.load}: {e}") from None
        load_model_state(self.saved_params, ck["model"], ck["path"])
        what = "release (converted) checkpoint" if ck["release"] else f"iteration {ck['iteration']}"
        if args.finetune or ck["release"]:
            self.log.print(f" > loaded weights of the {what} from {args.load}; starting at iteration 0"
                           + (" (--finetune)" if args.finetune else ""))
            return
        self.iteration = ck["iteration"]
        self._restore_data_position(ck)
        if not args.no_load_optim:
            if "optimizer" not in ck or "opt_param_scheduler" not in ck:
                raise TrainingError(f"--load {args.load}: the checkpoint of iteration {ck['iteration']} has no "
                                    f"optimizer state (saved with --no-save-optim); add --no-load-optim")
            self.optimizer.load_state_dict(ck["optimizer"], ck["path"])
            self.schedule.load_state_dict(ck["opt_param_scheduler"])
        else:
            self.schedule.num_steps = float(self.consumed)
        if not args.no_load_rng and "rng_state" in ck:
            set_rng_state(ck["rng_state"])
        self.log.print(f" > resumed from {args.load} at iteration {self.iteration} "
                       f"({self.consumed} consumed samples)")

    def _restore_data_position(self, ck):
        """Consumed samples and the feed's position from a checkpoint's sampler state (or, for a
        checkpoint without one, `iteration` x global batch); `self.iteration` is already set."""
        sampler = ck.get("data_sampler")
        self.consumed = int(sampler["consumed_samples"]) if sampler else self.iteration * self.gbs
        if sampler is not None:
            self.feed.load_state_dict(sampler)
        else:
            self.feed.skip_to(self.consumed)

    def save(self):
        from mindspeed_ms.training.checkpointing import save_checkpoint
        from mindspeed_ms.training.rng_state import get_rng_state
        args = self.args
        if self.rank != 0:      # DP ranks hold identical replicas; rank 0 writes mp_rank_00
            return
        t0 = time.time()
        model_sd = {name: p.asnumpy() for name, p in self.saved_params.items()}
        optim = sched = None
        if not args.no_save_optim:
            optim = self.optimizer.state_dict()
            sched = self.schedule.state_dict()
        rng = None if args.no_save_rng else get_rng_state()
        sampler = self.feed.state_dict()
        sampler["consumed_samples"] = self.consumed
        path = save_checkpoint(args.save, self.iteration, model_sd, args.ckpt_format, optim, sched, rng, sampler,
                               args={"micro_batch_size": args.micro_batch_size, "global_batch_size": self.gbs,
                                     "seed": args.seed, "data_parallel_size": self.dp, **self.checkpoint_meta})
        self.log.print(f"  successfully saved checkpoint at iteration {self.iteration:7d} to {path} "
                       f"[ {time.time() - t0:.2f}s ]")

    # ---- steps ---------------------------------------------------------------------------------
    def _weights(self, micro_batches: List[Dict], global_tokens: Optional[int]):
        samples = self._global_samples(micro_batches)
        for mb in micro_batches:
            mb["loss_weights"] = make_loss_weights(mb["labels"], self.args.loss_mode, len(micro_batches), self.dp,
                                                   samples, global_tokens, mb.get("packed_segments"))

    def _global_samples(self, micro_batches) -> int:
        """The per_sample mode's sample count: the global batch size, or with packed rows the
        samples they hold, over all micro-batches and DP ranks (each pack is one "sample" to the
        sampler, but the loss averages over the real ones, as unpacked)."""
        if self.args.loss_mode != "per_sample" or "packed_segments" not in micro_batches[0]:
            return self.gbs
        from mindspeed_ms.training.loss_weights import count_samples
        n = sum(count_samples(mb["packed_segments"]) for mb in micro_batches)
        if self.dp > 1:
            n = int(round(float(self.allreduce(self.ms.Tensor(float(n), self.ms.float32)).asnumpy())))
        return n

    def _global_valid_tokens(self, micro_batches) -> Optional[int]:
        if self.args.loss_mode != "per_token":
            return None
        n = sum(count_valid_tokens(mb["labels"]) for mb in micro_batches)
        if self.dp > 1:
            n = int(round(float(self.allreduce(self.ms.Tensor(float(n), self.ms.float32)).asnumpy())))
        return n

    def _tensors(self, mb):
        from mindspeed_ms.training.train_step import TRAIN_KEYS
        tensors = [self.ms.Tensor(mb[k]) for k in TRAIN_KEYS]
        if self.dynamic_shapes and not self._inputs_declared:
            dyn = [self.ms.Tensor(shape=[None] * t.ndim, dtype=t.dtype) for t in tensors]
            rows = [self.ms.Tensor(shape=[None], dtype=self.ms.int32)]
            scalar = self.ms.Tensor(shape=[], dtype=self.ms.float32)
            lead = [scalar] * 4 if self.whole_step else [self.ms.Tensor(shape=[], dtype=self.ms.bool_)]
            self.micro.set_inputs(*lead, *dyn, *rows)
            self.forward.set_inputs(*dyn)
            self._inputs_declared = True
        return tensors

    def _loss_rows(self, mb):
        """The training step's extra input: the flat positions with a loss (`loss_rows`). Only with
        dynamic shapes (CPU): their count changes every batch, which would recompile a static graph."""
        if not self.dynamic_shapes:
            return []
        from mindspeed_ms.training.loss_weights import loss_rows
        return [self.ms.Tensor(loss_rows(mb["loss_weights"]))]

    def train_step(self, micro_batches: List[Dict]):
        ms = self.ms
        if len(micro_batches) != self.ga:
            raise TrainingError(f"the data feed gave {len(micro_batches)} micro-batches, expected {self.ga}")
        self._weights(micro_batches, self._global_valid_tokens(micro_batches))
        real = len(micro_batches)
        micro_batches = pad_with_empty(micro_batches, self.step_micro_batches)
        lr = self.schedule.get_lr()
        if self.whole_step:
            mb = micro_batches[0]
            # count_nonzero: neat packing's attention mask holds sample numbers, not 1s
            tokens = ms.Tensor(float(np.count_nonzero(mb["attention_mask"])), ms.float32)
            stats_sum, norm = self.micro(*self.optimizer.host_scalars(lr), tokens, *self._tensors(mb),
                                         *self._loss_rows(mb))
        else:
            local = 0.0
            tokens = 0.0
            for i, mb in enumerate(micro_batches):
                out = self.micro(ms.Tensor(i == 0), *self._tensors(mb), *self._loss_rows(mb))
                local += float(out.asnumpy())
                if i < real:
                    tokens += float(np.count_nonzero(mb["attention_mask"]))
            stats = ms.Tensor(np.array([local, tokens], dtype=np.float32))
            stats_sum, norm = self.opt_step(stats, *self.optimizer.host_scalars(lr))
        self.optimizer.step += 1
        self.schedule.step(self.gbs)
        self.iteration += 1
        self.consumed += self.gbs
        loss, tok = (float(x) for x in stats_sum.asnumpy())
        return loss, float(norm.asnumpy()), lr, tok / self.gbs

    def evaluate(self) -> Optional[float]:
        """Mean validation loss over up to --eval-iters global batches, the model in inference mode
        (no LoRA dropout; `train_step.inference_mode`); None without validation batches."""
        from mindspeed_ms.training.train_step import inference_mode
        with inference_mode(self.model):
            return self._validation_loss()

    def _validation_loss(self) -> Optional[float]:
        args, ms = self.args, self.ms
        total, steps = 0.0, 0
        for micro_batches in self.feed.val_steps(args.eval_iters):
            self._weights(micro_batches, self._global_valid_tokens(micro_batches))
            loss = sum(float(self.forward(*self._tensors(mb)).asnumpy()) for mb in micro_batches)
            if self.dp > 1:
                loss = float(self.allreduce(ms.Tensor(loss, ms.float32)).asnumpy())
            total += loss
            steps += 1
        return total / steps if steps else None

    @property
    def compilations(self) -> int:
        return self.micro.compilations + self.forward.compilations

    def _dp_mean(self, value: float) -> float:
        """Mean of a host number over the data-parallel ranks."""
        if self.dp == 1:
            return value
        return float(self.allreduce(self.ms.Tensor(float(value), self.ms.float32)).asnumpy()) / self.dp

    def _reports_memory(self) -> bool:
        """Megatron prints the memory line on the ranks of data-parallel index 0 (here: rank 0)."""
        return self.rank == 0

    # ---- the loop ------------------------------------------------------------------------------
    def train(self):
        args = self.args
        start_it = self.iteration
        window_t0, window_n = time.time(), 0
        window_seq = window_real = 0.0
        t_train0 = time.time()
        while self.iteration < args.train_iters:
            t0 = time.time()
            micro_batches = self.feed.next_step()
            seq = padded_tokens_per_sample(micro_batches)
            loss, norm, lr, tps = self.train_step(micro_batches)
            window_n += 1
            window_seq, window_real = window_seq + seq, window_real + tps
            log_now = self.iteration % args.log_interval == 0
            elapsed_ms = (time.time() - window_t0) * 1000.0 / window_n if log_now else (time.time() - t0) * 1000.0
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} at iteration {self.iteration}; lower --lr or enable "
                                    f"--clip-grad")
            window = None
            if log_now:
                # MindSpeed-MM's tokens per sample: the LM's (padded) sequence length, averaged over
                # the step's micro-batches, the DP ranks and the logged iterations (a collective:
                # every rank computes it at the same iterations)
                padded = self._dp_mean(window_seq / window_n)
                window = Window(elapsed_ms, self.gbs, args.train_iters - self.iteration, padded,
                                window_real / window_n, time.time() - t_train0)
            self.log.iteration(self.iteration, self.consumed, elapsed_ms, lr, self.gbs, loss, norm,
                               window.tokens_per_sample if (log_now and args.log_tps) else None, log_now, window)
            if log_now and lr > 0 and not self.log.memory_reported and self._reports_memory():
                self.log.memory(self.rank, self.iteration, memory_stats(args.backend))
            if log_now:
                window_t0, window_n = time.time(), 0
                window_seq = window_real = 0.0
            if self.feed.has_val and args.eval_iters > 0 and self.iteration % args.eval_interval == 0:
                val = self.evaluate()
                if val is not None:
                    self.log.validation(self.iteration, val)
                window_t0 = time.time()
            if args.save and args.save_interval and self.iteration % args.save_interval == 0 \
                    and self.iteration < args.train_iters:
                self.save()
                window_t0 = time.time()
        trained = self.iteration - start_it
        seconds = time.time() - t_train0
        if hasattr(self.feed, "close"):
            self.feed.close()           # background loading threads (prefetched steps dropped)
        if self.feed.has_val and args.eval_iters > 0 and self.iteration % args.eval_interval != 0:
            val = self.evaluate()
            if val is not None:
                self.log.validation(self.iteration, val, where="validation (end of training)")
        if args.save and trained > 0:
            self.save()
        self.log.print(f" > graph compilations: {self.micro.compilations} training step(s) + "
                       f"{self.forward.compilations} evaluation; shape buckets seen: {self.feed.buckets_seen()}")
        self.log.print(f" > trained {trained} iterations in {seconds:.1f}s")
        if args.save and self.rank == self.world - 1:
            png = self.log.plot(os.path.join(args.save, "loss_curve.png"))
            if png:
                self.log.print(f" > loss curve: {png}")
        return trained
