"""DPO on the sharded (TP/PP/CP, distributed optimizer) path: posttrain_qwen2vl_dpo.py on Ascend.

The sharded SFT trainer (`training.sharded_trainer.ShardedTrainer`) is the skeleton: the same
layout, lazy rank slices, shard plan (LoRA adapters included), micro-batch wrapper (`Pipeline` /
`GradAccumulation`), `ShardedTrainStep` (gradients, `TiedGradSum`, clip, AdamW) under
`AutoParallel`, the rank-by-rank checkpoints. What DPO changes:

- **Pairs stay together.** The dp split of the step's inputs and MindSpore's micro-batch slicing
  both cut along axis 0, so the collator interleaves each pair (rows c0, r0, c1, r1, ...:
  `InterleavedDPOCollator`) and the loss reads pairs as `reshape(-1, 2)`: no cut can separate a
  chosen row from its rejected row (the CPU collator's [chosen..., rejected...] order would pair
  one dp rank's chosen rows with another rank's rejected rows).
- **The loss** (`ShardedDPOLossCell`): per-row summed label log-probs through the model's own
  (planned, vocab-parallel with tp > 1) `loss_fn.token_nll`, the DPO sigmoid loss with label
  smoothing and pref-ftx over the pairs, times 1/micro-batches (the wrapper sums micro-batches):
  the logical loss is the mean over the global batch's pairs, as the data-parallel DPO step's.
- **The reference** runs first in its own forward-only graph (`ShardedLogProbs` under
  `MicroBatchLogProbs`, MindSpore's pattern for pipeline inference: a loop over micro-batches with
  the Cells' pipeline stages, under the same `AutoParallel` settings) and enters the step as an
  input (`ref_logps`, split by dp like the batch), so no gradient reaches it. With LoRA and the
  base model as reference (the 72B script) it is the policy graph with the adapters gated off: no
  second copy of the weights; otherwise a second lazily built model under the same plan, each rank
  loading only its slices of `--ref-model`.
- **Metrics** (rewards/chosen, rejected, margins, accuracies) come from the same forward-only graph
  with the adapters on (the policy's log-probs before the update, which the step's loss also sees),
  computed on the host: one extra forward per step, because MindSpore's `Pipeline` returns only
  the loss. Without LoRA the policy needs its own forward graph for them.

Built and checked in the CPU dry mode (`dry_run`); never compiled (no Ascend machine). The loss of
the step, on the logical global batch, equals the data-parallel DPO loss (tests/test_sharded_dpo.py).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
from mindspore import nn, ops

from mindspeed_ms.data.collator import Qwen2VLCollator
from mindspeed_ms.parallel.train_setup import FLASH_KEY, SHARDED_KEYS, stack_micro_batches
from mindspeed_ms.rl.dpo_loss import DPOLoss
from mindspeed_ms.training.sharded_trainer import ShardedTrainer, TrainingError, uses_flash

# the DPO step's inputs: the SFT step's with the reference log-probs where the loss weights were
DPO_KEYS = tuple("ref_logps" if k == "loss_weights" else k for k in SHARDED_KEYS)
BATCH_KEYS = tuple(k for k in DPO_KEYS if k != "ref_logps")


class InterleavedDPOCollator(Qwen2VLCollator):
    """A pairwise batch of 2n rows in pair order: chosen 0, rejected 0, chosen 1, rejected 1, ...
    (each row carries its sample's images)."""

    def __call__(self, samples):
        rows = []
        for s in samples:
            for kind in ("chosen", "rejected"):
                row = {k: v for k, v in s.items() if not k.startswith(("chosen_", "rejected_"))}
                row.update(input_ids=s[f"{kind}_input_ids"], labels=s[f"{kind}_labels"])
                rows.append(row)
        return super().__call__(rows)


class ShardedLogProbs(nn.Cell):
    """[rows] summed label log-probs and [rows] label counts, through the model's planned loss_fn."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.network = model
        self.transpose = ops.Transpose()

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels, vision_cu_seqlens=None):
        position_ids = self.transpose(position_ids, (1, 0, 2))
        logits = self.network(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                              vision_segment_ids, vision_gather_index, vision_token_mask, None, None,
                              vision_cu_seqlens)
        nll, valid = self.network.loss_fn.token_nll(logits, labels)
        return -nll.sum(1), valid.sum(1)


class ShardedDPOLossCell(nn.Cell):
    """The DPO loss of one (logical) micro-batch of interleaved pairs, scaled by 1/micro-batches."""

    def __init__(self, model, dpo_loss: DPOLoss, micro_batches: int):
        super().__init__(auto_prefix=False)
        # registered first, so the model's Cells are named network.* (the micro-batch wrapper's
        # stage configs name them so, as for the SFT loss cell)
        self.network = model
        self.logps = ShardedLogProbs(model)
        self.dpo = dpo_loss
        self.scale = 1.0 / float(micro_batches)

    def construct(self, input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids, vision_segment_ids,
                  vision_gather_index, vision_token_mask, labels, ref_logps, vision_cu_seqlens=None):
        logps, counts = self.logps(input_ids, attention_mask, position_ids, pixel_values, vision_pos_ids,
                                   vision_segment_ids, vision_gather_index, vision_token_mask, labels,
                                   vision_cu_seqlens)
        pol, ref, cnt = ops.reshape(logps, (-1, 2)), ops.reshape(ref_logps, (-1, 2)), ops.reshape(counts, (-1, 2))
        loss, _ = self.dpo(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], cnt[:, 0])
        return loss * self.scale


class MicroBatchLogProbs(nn.Cell):
    """Forward-only log-probs of a whole step, micro-batch by micro-batch (pipeline inference)."""

    def __init__(self, logps: ShardedLogProbs, micro_batches: int):
        super().__init__(auto_prefix=False)
        self.logps = logps
        self.micro = int(micro_batches)
        self.concat = ops.Concat(0)

    def construct(self, *batch):
        n = batch[0].shape[0] // self.micro
        out = ()
        for i in range(self.micro):
            part = [x[i * n:(i + 1) * n] if x.ndim and x.shape[0] == batch[0].shape[0] else x for x in batch]
            out = out + (self.logps(*part)[0],)
        return ops.stop_gradient(self.concat(out))


def dpo_metrics(policy: np.ndarray, ref: np.ndarray, beta: float) -> Dict[str, float]:
    """rl/dpo_loss.py's reward metrics from interleaved [rows] log-probs (numpy, float64)."""
    p, r = np.asarray(policy, np.float64).reshape(-1, 2), np.asarray(ref, np.float64).reshape(-1, 2)
    rc, rr = beta * (p[:, 0] - r[:, 0]), beta * (p[:, 1] - r[:, 1])
    return {"rewards/chosen": float(rc.mean()), "rewards/rejected": float(rr.mean()),
            "rewards/margins": float((rc - rr).mean()), "rewards/accuracies": float((rc > rr).mean())}


class ShardedDPOTrainer(ShardedTrainer):
    """The sharded trainer with the DPO loss, reference pass and metrics (module docstring)."""

    def __init__(self, args, startup, rank, world, logger, model, feed, backend="Ascend", dry=False, lazy=False,
                 lora=None, reference_model=None, ref_dir=None):
        """`reference_model`: a second (lazily built) model for a frozen reference, loaded from
        `ref_dir`; None: the policy with its LoRA adapters off (needs `lora`)."""
        if reference_model is None and lora is None:
            raise TrainingError("sharded DPO: a reference model is needed (or LoRA with the base as reference)")
        pcfg = startup.parallel
        if pcfg.pipeline_micro_batches != pcfg.num_micro_batches:
            # an empty (padding) micro-batch would add log 2 per pair slot to the DPO loss
            raise TrainingError(f"sharded DPO needs at least {pcfg.pp} micro-batches per step (one per pipeline "
                                f"stage), the layout has {pcfg.num_micro_batches}: raise --global-batch-size to "
                                f"{pcfg.pp * args.micro_batch_size * pcfg.dp} or more")
        self.dpo_loss = DPOLoss(args.dpo_beta, args.dpo_label_smoothing, args.pref_ftx, args.dpo_loss_type)
        self.reference_model, self.ref_dir = reference_model, ref_dir
        super().__init__(args, startup, rank, world, logger, model, feed, backend, dry, lazy, lora)
        if reference_model is not None:
            from mindspeed_ms.parallel.shard_plan import apply_shard_plan, build_shard_plan
            for p in reference_model.get_parameters():
                p.requires_grad = False
            self.ref_plan = build_shard_plan(startup.model, self.pcfg, backend, bf16=uses_flash(args, backend))
            apply_shard_plan(reference_model, self.ref_plan)
            if lazy and dry:
                self._fill_reference(compiled=False)
        self.ref_net = self._logps_net(reference_model if reference_model is not None else self.model.network)
        # the policy's log-probs for the metrics (with LoRA the same graph as the reference's)
        self.policy_net = self.ref_net if reference_model is None else self._logps_net(self.model.network)
        logger.print(f" > sharded DPO: beta {args.dpo_beta}, label smoothing {args.dpo_label_smoothing}, pref_ftx "
                     f"{args.pref_ftx}; reference: " + ("the base model (LoRA adapters off)" if reference_model is None
                                                       else f"a frozen copy from {ref_dir}"))

    def _step_keys(self):
        return DPO_KEYS

    def _loss_network(self):
        return ShardedDPOLossCell(self.model.network, self.dpo_loss, self.pcfg.num_micro_batches)

    def _logps_net(self, network):
        from mindspeed_ms.parallel.train_setup import autoparallel_settings
        from mindspeed_ms.training.sharded_trainer import _RANKS
        keys = [k for k in self.keys if k != "ref_logps"]
        settings = autoparallel_settings(self.plan, [_RANKS[k] for k in keys])
        return settings.apply(MicroBatchLogProbs(ShardedLogProbs(network), self.pcfg.num_micro_batches))

    def _fill_reference(self, compiled: bool):
        from mindspeed_ms.parallel.lazy_params import RankSource, fill_rank_params
        from mindspeed_ms.parallel.rank_checkpoint import stage_names
        params = {p.name: p for p in self.reference_model.get_parameters()}
        names = stage_names(self.ref_plan, self.coords.pp, params)
        try:
            src = RankSource(self.ref_dir, self.ref_plan, self.coords.tp, self.coords.pp)
            missing = [n for n in names if n not in src]
            if missing:
                raise ValueError(f"stage {self.coords.pp} lacks {len(missing)} parameters (first: {missing[0]})")
            fill_rank_params(params, self.ref_plan, self.coords.tp, self.coords.pp, {n: src for n in names},
                             self.args.seed, compiled)
        except (ValueError, OSError) as e:
            raise TrainingError(f"--ref-model {self.ref_dir}: {e}") from None

    # ---- inputs ----------------------------------------------------------------------------------
    def step_batch(self, micro_batches: List[Dict]) -> List[np.ndarray]:
        """The step's batch inputs (without the reference log-probs), stacked along axis 0."""
        if len(micro_batches) != self.ga:
            raise TrainingError(f"the data feed gave {len(micro_batches)} micro-batches, expected {self.ga}")
        return stack_micro_batches(micro_batches, [k for k in self.keys if k != "ref_logps"])

    def with_reference(self, batch: List[np.ndarray], ref_logps: np.ndarray) -> List[np.ndarray]:
        i = self.keys.index("ref_logps")
        return batch[:i] + [np.asarray(ref_logps, np.float32)] + batch[i:]

    def _local_rows(self, x, rows: int) -> np.ndarray:
        """This rank's rows of a forward graph's output (its dp slice when the output is global)."""
        x = np.asarray(x)
        if x.shape[0] == rows:
            return x
        return x.reshape(self.pcfg.dp, rows)[self.coords.dp]

    def _logps(self, net, tensors, rows, adapters_on: bool):
        lora = self.lora_session
        if lora is not None and not adapters_on:
            with lora.adapters.disabled():
                return self._local_rows(net(*tensors).asnumpy(), rows)
        return self._local_rows(net(*tensors).asnumpy(), rows)

    def step_inputs(self, micro_batches: List[Dict]) -> List[np.ndarray]:
        batch = self.step_batch(micro_batches)
        self._check_not_dry("the DPO reference pass")
        ms = self.ms
        rows = batch[0].shape[0]
        self._materialize_compiled([ms.Tensor(x) for x in self.with_reference(batch, np.zeros(rows, np.float32))])
        if self.reference_model is not None and self.lazy and not getattr(self, "_ref_filled", False):
            self._fill_reference(compiled=True)
            self._ref_filled = True
        tensors = [ms.Tensor(x) for x in batch]
        ref = self._logps(self.ref_net, tensors, rows, adapters_on=self.reference_model is not None)
        policy = self._logps(self.policy_net, tensors, rows, adapters_on=True)
        m = dpo_metrics(policy, ref, self.args.dpo_beta)
        # averaged over the dp ranks (each holds the same number of pairs)
        vals = self._world_sum(list(m.values())) / self.dp
        self.log.pending = dict(zip(m, (float(v) for v in vals)))
        return self.with_reference(batch, ref)


def build_sharded_dpo_feed(args, startup, rank: int, backend: str = "Ascend"):
    """This rank's ranking-data feed for the sharded step: fixed shapes (2 x mbs rows per micro-batch),
    dp offsets, interleaved pairs."""
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.data.dataset import build_datasets
    from mindspeed_ms.parallel.train_setup import (collator_options, dataset_vision_counts, fixed_vision_shapes,
                                                   rank_coords)
    from mindspeed_ms.rl.dpo_trainer import check_ranking_data
    from mindspeed_ms.training.build import make_feed
    cfg = load_data_json(args.mm_data)
    check_ranking_data(args, cfg)
    pcfg = startup.parallel
    coords = rank_coords(rank, pcfg)
    merge = startup.model.vision.spatial_merge_size
    train, val = build_datasets(cfg, args.seq_length, seed=args.seed)
    patches, blocks = dataset_vision_counts(train, cfg, args.seq_length, merge)
    # each pair's images travel with both rows
    n, k = fixed_vision_shapes(patches, blocks, 2 * args.micro_batch_size, merge)
    opts = collator_options(pcfg, coords, args.seq_length, n, k if uses_flash(args, backend) else None)
    cp = cfg.dataloader_param.collate_param
    from mindspeed_ms.training.build import batch_layout_for   # the model family's vision layout
    collator = InterleavedDPOCollator(args.seq_length, ignore_pad_token_for_loss=cp.ignore_pad_token_for_loss,
                                      pad_to_multiple_of=cp.pad_to_multiple_of,
                                      batch_layout=batch_layout_for(startup.model), **opts)
    return make_feed(args, cfg, train, val, collator, coords.dp)


def build_reference_model(startup, args, backend: str, lora, ref_dir: str, lazy: bool = True):
    """None when the reference is the LoRA base (adapters off); else a second, lazily built model."""
    from contextlib import nullcontext
    from mindspeed_ms.parallel.lazy_params import lazy_init
    from mindspeed_ms.rl.dpo_trainer import _same_dir
    from mindspeed_ms.training.build import build_model
    if lora is not None and (ref_dir is None or _same_dir(ref_dir, lora.base_dir)):
        return None
    with lazy_init() if lazy else nullcontext():
        return build_model(startup.model, args, backend).network


def dry_run(argv, rank: int, world: int, logger=None, lazy: bool = True) -> ShardedDPOTrainer:
    """posttrain_qwen2vl_dpo.py's sharded path built on this machine up to (not including) compilation."""
    from mindspeed_ms.arguments import parse_args, validate_args
    from mindspeed_ms.rl.dpo_log import DPOTrainLogger
    from mindspeed_ms.rl.dpo_trainer import PROG, check_dpo_args, resolve_reference
    from mindspeed_ms.training.sharded_trainer import build_sharded_model
    args = parse_args(argv, prog=PROG)
    check_dpo_args(args)
    startup = validate_args(args, world_size=world, backend="Ascend")
    ref_dir = resolve_reference(args)
    feed = build_sharded_dpo_feed(args, startup, rank)
    logger = logger or DPOTrainLogger(args.train_iters, False)
    model, lora = build_sharded_model(startup, args, "Ascend", logger, lazy=lazy)
    ref = build_reference_model(startup, args, "Ascend", lora, ref_dir, lazy=lazy)
    tr = ShardedDPOTrainer(args, startup, rank, world, logger, model, feed, "Ascend", dry=True, lazy=lazy, lora=lora,
                           reference_model=ref, ref_dir=ref_dir)
    if lora is not None:
        lora.bind(tr)
    return tr


