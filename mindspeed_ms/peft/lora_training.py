"""LoRA in the training loop (pretrain_vlm.py and posttrain_qwen2vl_dpo.py).

Where the weights come from:
- `--load-base-model B`: the base model's full checkpoint; `--load L` (optional) is then a LoRA
  checkpoint of an earlier run (adapters, optimizer, iteration) that the run resumes from.
- no `--load-base-model`: `--load` is the base model's full checkpoint (MindSpeed-MM's 72B DPO
  script passes the converted model this way) and the adapters start fresh at iteration 0.
A LoRA checkpoint (adapter weights only) given as the base is an error that says to add
`--load-base-model`. Checkpoints written by a LoRA run hold only the adapters (names
`<module>.lora_A.default.weight`), plus `lora_r` / `lora_alpha` / `lora_target_modules` in the
rank file's `args`, which `merge_lora.py` reads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from mindspeed_ms.peft.lora_merge import is_lora_name
from mindspeed_ms.peft.lora_model import GATE_NAME, LoRAAdapters, LoRAConfigError, apply_lora, check_lora_options


def _has_checkpoint(d: Optional[str]) -> bool:
    return bool(d) and os.path.isfile(os.path.join(d, "latest_checkpointed_iteration.txt"))


def check_lora_args(args):
    """Flag checks before any compute (raises LoRAConfigError naming the flag)."""
    if not args.lora_target_modules:
        if args.load_base_model:
            raise LoRAConfigError("--load-base-model is given without --lora-target-modules: the base model is only "
                                  "used under LoRA adapters; add --lora-target-modules or use --load")
        return
    check_lora_options(args.lora_target_modules, args.lora_r, args.lora_alpha, args.lora_dropout)
    if args.load_base_model and not _has_checkpoint(args.load_base_model):
        raise LoRAConfigError(f"--load-base-model {args.load_base_model}: no checkpoint there "
                              f"(latest_checkpointed_iteration.txt is missing); give the base model's MM checkpoint "
                              f"(mm-convert hf_to_mm output)")


@dataclass
class LoRASession:
    adapters: LoRAAdapters
    base_dir: Optional[str]
    resume_from_load: bool     # --load is a LoRA checkpoint to resume (Trainer.load reads it)

    def checkpoint_args(self) -> dict:
        a = self.adapters
        return {"lora_r": int(a.r), "lora_alpha": float(a.alpha), "lora_dropout": float(a.dropout),
                "lora_target_modules": list(a.target_modules)}

    def bind(self, trainer):
        """Checkpoints of `trainer` hold the adapters only (and record the LoRA settings)."""
        trainer.saved_params = dict(self.adapters.params)
        trainer.checkpoint_meta.update(self.checkpoint_args())


def load_base_weights(model, base_dir: str, adapters: LoRAAdapters, logger=None, plan_tp: int = 1):
    """Load the base model's weights (every parameter but the adapters) from a full checkpoint,
    in the in-memory order of a sharded run with tensor parallel `plan_tp` (rank_params.to_plan_layout)."""
    from mindspeed_ms.parallel.rank_params import to_plan_layout
    from mindspeed_ms.training.checkpointing import CheckpointLoadError, load_checkpoint
    from mindspeed_ms.training.trainer import TrainingError, load_model_state
    try:
        ck = load_checkpoint(base_dir)
    except (CheckpointLoadError, ValueError) as e:
        raise TrainingError(f"LoRA base model {base_dir}: {e}") from None
    state = {k: to_plan_layout(k, v, plan_tp) for k, v in ck["model"].items()}
    lora_names = [n for n in state if is_lora_name(n)]
    if lora_names and len(lora_names) == len(state):
        raise TrainingError(f"{ck['path']} holds LoRA adapter weights only ({len(lora_names)} tensors): LoRA needs "
                            f"the base model too; pass the base checkpoint with --load-base-model and this one "
                            f"with --load")
    base_params = {p.name: p for p in model.get_parameters() if p.name not in adapters.params and p.name != GATE_NAME}
    load_model_state(base_params, {k: v for k, v in state.items() if not is_lora_name(k)}, ck["path"])
    if lora_names:
        load_model_state(adapters.params, {k: state[k] for k in lora_names}, ck["path"])
    if logger is not None:
        logger.print(f" > LoRA base model loaded from {base_dir} ({len(base_params)} tensors, frozen)")


def attach_lora(model, args, logger=None, plan_tp: int = 1, load_base: bool = True) -> Optional[LoRASession]:
    """With --lora-target-modules: adapters on, base frozen and loaded; None otherwise. `plan_tp`:
    the tensor-parallel size of a sharded run (its parameters hold the GLU rows per rank).
    `load_base=False`: a lazily built sharded model, whose rank loads only its base slices later
    (`training.sharded_trainer`)."""
    from mindspeed_ms.training.trainer import TrainingError
    try:
        check_lora_args(args)
        if not args.lora_target_modules:
            return None
        adapters = apply_lora(model, args.lora_target_modules, args.lora_r, args.lora_alpha, args.lora_dropout,
                              args.seed)
    except LoRAConfigError as e:
        raise TrainingError(str(e)) from None
    base_dir = args.load_base_model or args.load
    if base_dir and load_base:
        load_base_weights(model, base_dir, adapters, logger, plan_tp)
    elif logger is not None:
        logger.notice("LoRA without --load-base-model or --load: the base model is randomly initialised")
    if logger is not None:
        n = sum(int(p.size) for p in adapters.params.values())
        logger.print(f" > LoRA: {len(adapters.layers)} adapters (r {args.lora_r}, alpha {args.lora_alpha}, "
                     f"targets {' '.join(args.lora_target_modules)}), {n:,} trainable parameters")
    return LoRASession(adapters, base_dir, resume_from_load=bool(args.load_base_model and args.load))
