"""posttrain_qwen2vl_dpo.py: DPO preference training with the fine-tuning loop's command line.

Same parser, checks, data feed, optimizer, checkpoints and logs as pretrain_vlm.py; what differs:
- the data must be ranking data (`attr.ranking: true`, collator `qwen2vl_dpo`); a global batch of
  GBS pairs is cut into micro-batches of `--micro-batch-size` pairs (2 x mbs rows each);
- the loss is DPO (rl/dpo_loss.py) on summed label log-probs of the policy and of a frozen
  reference, and `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`
  are logged every iteration (averaged over the global batch);
- the reference is `--ref-model` (default: the model the run starts from). With LoRA and a
  reference that is the base model, the reference pass is the policy with its adapters gated off:
  no second copy of the weights. Otherwise a frozen copy is loaded from `--ref-model`.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from mindspeed_ms.arguments import ArgumentError
from mindspeed_ms.rl.dpo_log import METRICS
from mindspeed_ms.rl.dpo_loss import DPOLoss, check_dpo_options
from mindspeed_ms.rl.dpo_step import LOGP_KEYS, DPOForward, DPOLossCell, DPOMicroStep, ReferenceLogProbs
from mindspeed_ms.training.trainer import Trainer, TrainingError, load_model_state

PROG = "posttrain_qwen2vl_dpo.py"


def _is_checkpoint(d: Optional[str]) -> bool:
    return bool(d) and os.path.isfile(os.path.join(d, "latest_checkpointed_iteration.txt"))


def _same_dir(a: Optional[str], b: Optional[str]) -> bool:
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def resolve_reference(args) -> Optional[str]:
    """The reference checkpoint directory (checked before any compute); None for LoRA without any
    checkpoint (the randomly initialised base, adapters off, is the reference)."""
    lora = bool(args.lora_target_modules)
    if args.ref_model is not None:
        if not os.path.isdir(args.ref_model):
            raise ArgumentError(f"--ref-model {args.ref_model}: no such directory. Give the reference model's MM "
                                f"checkpoint (usually the model the run starts from, as --load).")
        if not _is_checkpoint(args.ref_model):
            raise ArgumentError(f"--ref-model {args.ref_model} holds no checkpoint (latest_checkpointed_iteration.txt "
                                f"is missing): point it at an mm-convert hf_to_mm output or a --save directory.")
        return args.ref_model
    start = (args.load_base_model or args.load) if lora else args.load
    if lora and not start:
        return None      # LoRA on a randomly initialised base (attach_lora says so): the reference is that base
    if not start:
        raise ArgumentError("DPO needs a frozen reference model: pass --ref-model (or --load, its default) with the "
                            "checkpoint the policy starts from.")
    if not lora and not args.finetune:
        from mindspeed_ms.checkpoint.layout import latest_tag
        if latest_tag(args.load) != "release":
            raise ArgumentError(f"--load {args.load} is an iteration checkpoint, so this run resumes an earlier "
                                f"one; the reference must stay the original model: pass it with --ref-model.")
    return start


class AdapterOffReference:
    """The base model as reference: the policy's own graph with every LoRA adapter gated off."""

    kind = "the base model (LoRA adapters off, weights shared with the policy)"

    def __init__(self, policy_model, adapters):
        self.cell = ReferenceLogProbs(policy_model)
        self.adapters = adapters

    def logps(self, tensors):
        with self.adapters.disabled():
            return self.cell(*tensors)

    def snapshot(self) -> Dict[str, np.ndarray]:
        return {}


class FrozenReference:
    """A separate frozen copy of the model, loaded from the reference checkpoint."""

    def __init__(self, model, source):
        self.model = model
        for p in model.get_parameters():
            p.requires_grad = False
        self.cell = ReferenceLogProbs(model)
        self.kind = f"a frozen copy loaded from {source}"

    def logps(self, tensors):
        return self.cell(*tensors)

    def snapshot(self) -> Dict[str, np.ndarray]:
        return {p.name: p.asnumpy().copy() for p in self.model.get_parameters()}


def build_reference(args, startup, backend, ref_dir, policy, lora):
    if lora is not None and (ref_dir is None or _same_dir(ref_dir, lora.base_dir)):
        return AdapterOffReference(policy.network, lora.adapters)
    from mindspeed_ms.training.build import build_model
    from mindspeed_ms.training.checkpointing import CheckpointLoadError, load_checkpoint
    ref = build_model(startup.model, args, backend).network
    try:
        ck = load_checkpoint(ref_dir)
    except (CheckpointLoadError, ValueError) as e:
        raise TrainingError(f"--ref-model {ref_dir}: {e}") from None
    load_model_state({p.name: p for p in ref.get_parameters()}, ck["model"], ck["path"])
    return FrozenReference(ref, ref_dir)


def check_dpo_args(args):
    """The DPO and LoRA flags, before any compute (ValueError / LoRAConfigError naming the flag)."""
    from mindspeed_ms.peft.lora_training import check_lora_args
    check_dpo_options(args.dpo_loss_type, args.dpo_label_smoothing, args.dpo_beta)
    check_lora_args(args)


def check_ranking_data(args, cfg):
    dl = cfg.dataloader_param
    if dl.collate_param.model_name != "qwen2vl_dpo" or not cfg.attr.ranking:
        raise ValueError(f"--mm-data {args.mm_data}: DPO needs ranking data (attr.ranking: true with attr.chosen / "
                         f"attr.rejected naming the two answers, and collate_param.model_name \"qwen2vl_dpo\"), as in "
                         f"examples/mindspore/qwen2vl/data_72b_dpo.json")


def build_dpo_feed(args, startup, rank: int):
    """Ranking datasets of --mm-data through the `qwen2vl_dpo` collator, in Megatron's order."""
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.data.collator import build_collator
    from mindspeed_ms.data.dataset import build_datasets
    from mindspeed_ms.training.build import make_feed

    cfg = load_data_json(args.mm_data)
    check_ranking_data(args, cfg)
    train, val = build_datasets(cfg, args.seq_length, seed=args.seed)
    from mindspeed_ms.training.vocab_check import check_token_ids
    check_token_ids((train, val), startup.model.text.vocab_size, args.mm_data, args.mm_model)
    from mindspeed_ms.training.build import batch_layout_for  # the model family's vision layout
    collator = build_collator(cfg, args.seq_length, batch_layout=batch_layout_for(startup.model))
    return make_feed(args, cfg, train, val, collator, rank)


class DPOTrainer(Trainer):
    """The fine-tuning Trainer with the DPO micro-step, reference pass, metrics and validation."""

    def __init__(self, args, startup, rank, world, logger, model, feed, reference):
        self.reference = reference      # before Trainer.__init__, which calls _build_steps
        super().__init__(args, startup, rank, world, logger, model, feed)
        self.weight = self.ms.Tensor(1.0 / (self.ga * self.dp), self.ms.float32)
        logger.print(f" > DPO: beta {args.dpo_beta}, loss {args.dpo_loss_type}, label smoothing "
                     f"{args.dpo_label_smoothing}, pref_ftx {args.pref_ftx}; reference: {reference.kind}")

    def _build_steps(self):
        """The SFT optimizer step with the DPO micro-step and validation forward."""
        from mindspeed_ms.training.optimizer import AdamW
        from mindspeed_ms.training.train_step import OptimizerStep, make_accumulators
        args = self.args
        self.accum = make_accumulators(self.trainable)
        self.optimizer = AdamW(self.trainable, args.adam_beta1, args.adam_beta2, args.adam_eps, args.weight_decay)
        self.opt_step = OptimizerStep(self.accum, self.optimizer, args.clip_grad, self.dp)
        self.loss_cell = DPOLossCell(self.model.network, DPOLoss(args.dpo_beta, args.dpo_label_smoothing,
                                                                 args.pref_ftx, args.dpo_loss_type))
        self.micro = DPOMicroStep(self.loss_cell, self.trainable, self.accum)
        self.forward = DPOForward(self.loss_cell)

    def _inputs(self, mb):
        ms = self.ms
        t = [ms.Tensor(mb[k]) for k in LOGP_KEYS]
        if self.dynamic_shapes and not self._inputs_declared:
            # as the SFT trainer: one CPU graph per Cell with dynamic batch / sequence / patch dims
            dyn = [ms.Tensor(shape=[None] * x.ndim, dtype=x.dtype) for x in t]
            ref, w = ms.Tensor(shape=[None], dtype=ms.float32), ms.Tensor(shape=[], dtype=ms.float32)
            self.micro.set_inputs(ms.Tensor(shape=[], dtype=ms.bool_), *dyn, ref, w)
            self.forward.set_inputs(*dyn, ref, w)
            self.reference.cell.set_inputs(*dyn)
            self._inputs_declared = True
        return t, self.reference.logps(t)

    def train_step(self, micro_batches: List[Dict]):
        ms = self.ms
        if len(micro_batches) != self.ga:
            raise TrainingError(f"the data feed gave {len(micro_batches)} micro-batches, expected {self.ga}")
        sums = np.zeros(6, np.float64)     # loss, tokens, 4 metrics (each already / (GA x DP))
        for i, mb in enumerate(micro_batches):
            t, ref = self._inputs(mb)
            out = self.micro(ms.Tensor(i == 0), *t, ref, self.weight)
            w = 1.0 / (self.ga * self.dp)
            sums[0] += float(out[0].asnumpy())
            sums[1] += float(np.asarray(mb["attention_mask"]).sum())
            sums[2:] += [float(x.asnumpy()) * w for x in out[1:]]
        lr = self.schedule.get_lr()
        stats_sum, norm = self.opt_step(ms.Tensor(sums.astype(np.float32)), *self.optimizer.host_scalars(lr))
        self.optimizer.step += 1
        self.schedule.step(self.gbs)
        self.iteration += 1
        self.consumed += self.gbs
        stats = stats_sum.asnumpy().astype(np.float64)
        self.log.pending = dict(zip(METRICS, (float(x) for x in stats[2:])))
        return float(stats[0]), float(norm.asnumpy()), lr, float(stats[1]) / self.gbs

    def _validation_loss(self) -> Optional[float]:
        total, steps = 0.0, 0
        for micro_batches in self.feed.val_steps(self.args.eval_iters):
            loss = 0.0
            for mb in micro_batches:
                t, ref = self._inputs(mb)
                loss += float(self.forward(*t, ref, self.weight)[0].asnumpy())
            if self.dp > 1:
                loss = float(self.allreduce(self.ms.Tensor(loss, self.ms.float32)).asnumpy())
            total += loss
            steps += 1
        return total / steps if steps else None
