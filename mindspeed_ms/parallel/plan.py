"""`python -m mindspeed_ms.parallel.plan`: check a parallel layout and estimate its memory.

Takes the launch scripts' flag names, validates the layout first (exit code 2 with the reason
when it is invalid), then prints the layer placement per pipeline stage, per-rank parameter shapes
for one layer of each kind, the static check of the shard plan and a per-device memory estimate,
warning when a stage exceeds --device-memory-gb.
"""
import argparse
import sys

from mindspeed_ms.config.model_config import ModelConfigError, load_model_json
from mindspeed_ms.config.param_shapes import PROJECTOR_PREFIX, TEXT_PREFIX, VISION_PREFIX
from mindspeed_ms.parallel.checker import check_plan
from mindspeed_ms.parallel.config import ParallelConfigError, validate_parallel_config
from mindspeed_ms.parallel.memory import GiB, estimate_memory
from mindspeed_ms.parallel.rank_params import rank_param_shapes
from mindspeed_ms.parallel.shard_plan import LoRASpec, build_shard_plan
from mindspeed_ms.help_format import DefaultsHelpFormatter


def build_parser():
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.parallel.plan", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--mm-model", required=True, help="the model_*.json of the run (sizes and pipeline_num_layers)")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1, help="TP: heads and MLP split over this many devices")
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1,
                   help="PP: pipeline stages (must match the length of pipeline_num_layers)")
    p.add_argument("--virtual-pipeline-model-parallel-size", type=int, default=None,
                   help="VPP: model chunks per stage (interleaved schedule); default: none")
    p.add_argument("--context-parallel-size", type=int, default=1, help="CP: the sequence split over this many devices")
    p.add_argument("--context-parallel-algo", default="ulysses_cp_algo", help="CP algorithm, as MindSpeed names it")
    p.add_argument("--sequence-parallel", action="store_true",
                   help="SP: norms and dropout regions split over the TP group (activations / TP)")
    p.add_argument("--use-distributed-optimizer", action="store_true",
                   help="optimizer state (fp32 master weights, Adam moments) split over the DP group")
    p.add_argument("--enable-dummy-optimizer", action="store_true",
                   help="no optimizer state for frozen parameters (MindSpeed-MM's flag for frozen ViT/LLM parts)")
    p.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="activation recomputation: full layers or attention only; default: none")
    p.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                   help="which layers full recomputation covers (Megatron's meaning)")
    p.add_argument("--recompute-num-layers", type=int, default=None, help="layers recomputed per stage/chunk")
    p.add_argument("--micro-batch-size", type=int, required=True, help="samples per micro-batch per DP rank")
    p.add_argument("--global-batch-size", type=int, default=None,
                   help="default: micro-batch-size x dp x pp (enough micro-batches to fill the pipeline)")
    p.add_argument("--seq-length", type=int, required=True, help="LLM sequence length (tokens, vision tokens included)")
    p.add_argument("--num-devices", type=int, required=True, help="world size (NPUS_PER_NODE x NNODES)")
    p.add_argument("--device-memory-gb", type=float, default=64.0,
                   help="memory of one device, for the fits / does-not-fit verdict")
    p.add_argument("--vision-patches", type=int, default=None,
                   help="ViT patches per sample for the activation estimate of a trainable ViT "
                        "(default: seq-length x spatial_merge_size^2, the most a sample can carry)")
    p.add_argument("--fp32", action="store_true", help="estimate an fp32 run (CPU) instead of bf16 (Ascend)")
    p.add_argument("--lora-target-modules", nargs="+", default=None,
                   help="LoRA run: the adapters' strategies and shapes, and memory with only the adapters trained")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (with --lora-target-modules)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout (with --lora-target-modules)")
    p.add_argument("--dpo", action="store_true",
                   help="a DPO run (posttrain_qwen2vl_dpo.py): chosen + rejected rows per pair and the reference "
                        "model (with LoRA: the base, adapters off; else a frozen copy of the weights)")
    p.add_argument("--llm-pp-layers", type=int, nargs="+", default=None,
                   help="LLM layers per pipeline stage instead of model.json's pipeline_num_layers (mm-convert's "
                        "llm_pp_layers)")
    p.add_argument("--vit-pp-layers", type=int, nargs="+", default=None,
                   help="ViT layers per pipeline stage instead of model.json's pipeline_num_layers")
    return p


def _fmt_gib(n):
    return f"{n / GiB:8.2f}"


def run(argv=None, out=sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load_model_json(args.mm_model)
    except ModelConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.llm_pp_layers is not None:
        model.text.pipeline_num_layers = list(args.llm_pp_layers)
    if args.vit_pp_layers is not None:
        model.vision.pipeline_num_layers = list(args.vit_pp_layers)
    if args.global_batch_size is None:
        dp = max(1, args.num_devices // max(1, args.tensor_model_parallel_size * args.pipeline_model_parallel_size
                                             * args.context_parallel_size))
        args.global_batch_size = args.micro_batch_size * dp * args.pipeline_model_parallel_size
    try:
        cfg = validate_parallel_config(args, model, args.num_devices)
    except ParallelConfigError as e:
        print(f"error: invalid parallel layout: {e}", file=sys.stderr)
        return 2
    dtype = "fp32" if args.fp32 else "bf16"
    lora = None
    if args.lora_target_modules:
        from mindspeed_ms.peft.lora_model import check_lora_options  # imports MindSpore: only for LoRA
        try:
            check_lora_options(args.lora_target_modules, args.lora_r, 1.0, args.lora_dropout)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        lora = LoRASpec(tuple(args.lora_target_modules), args.lora_r, args.lora_dropout)
    plan = build_shard_plan(model, cfg, backend="CPU" if args.fp32 else "Ascend", bf16=not args.fp32,
                            vision_patches=args.vision_patches, lora=lora)
    if lora is not None and not plan.lora_modules:
        print(f"error: --lora-target-modules {' '.join(lora.targets)} matches no linear layer of the plan "
              f"(linear_qkv, linear_proj, linear_fc1, linear_fc2)", file=sys.stderr)
        return 2
    w = out.write
    w(f"layout: world {cfg.world_size} = dp {cfg.dp} x tp {cfg.tp} x pp {cfg.pp} x cp {cfg.cp}"
      + (f", vpp {cfg.vpp}" if cfg.vpp > 1 else "")
      + f"; micro-batch {cfg.micro_batch_size}, global batch {cfg.global_batch_size} "
        f"({cfg.num_micro_batches} micro-batches per step per dp rank"
        + (f" + {cfg.pipeline_micro_batches - cfg.num_micro_batches} empty"
           if cfg.pipeline_micro_batches > cfg.num_micro_batches else "") + ")"
      + (", sequence parallel" if cfg.sequence_parallel else "")
      + (", distributed optimizer" if cfg.use_distributed_optimizer else "")
      + (f"; LoRA r {lora.r} on {len(plan.lora_modules)} linears (base frozen)" if lora else "")
      + ("; DPO: 2 rows (chosen + rejected) per pair, reference = "
         + ("the base model (LoRA adapters off, no second copy)" if lora else "a frozen copy of the weights")
         if args.dpo else "") + "\n")
    for note in cfg.notices + plan.notes:
        w(f"note: {note}\n")

    w("\nlayer placement (global layer indices):\n")
    for pl in cfg.layout.placements:
        parts = []
        if pl.patch_embed:
            parts.append("patch_embed")
        if len(pl.vit_layers):
            parts.append(f"vit {pl.vit_layers.start}-{pl.vit_layers.stop - 1} ({len(pl.vit_layers)})")
        if pl.projector:
            parts.append("projector")
        if pl.embedding:
            parts.append("embedding")
        if len(pl.llm_layers):
            parts.append(f"llm {pl.llm_layers.start}-{pl.llm_layers.stop - 1} ({len(pl.llm_layers)})")
        if pl.output_layer:
            parts.append("final_layernorm + output_layer")
        chunk = f" chunk {pl.chunk}" if cfg.vpp > 1 else ""
        frozen = " [frozen only]" if pl.stage in cfg.frozen_stages else ""
        w(f"  stage {pl.stage}{chunk}: {', '.join(parts) or '-'}{frozen}\n")

    w(f"\nper-rank parameter shapes (each of the {cfg.tp} tensor-parallel ranks):\n")
    shown = set()
    kinds = [("vit layer", f"{VISION_PREFIX}.blocks.layers.0."), ("projector", f"{PROJECTOR_PREFIX}."),
             ("llm layer", f"{TEXT_PREFIX}.decoder.layers.0."), ("embedding", f"{TEXT_PREFIX}.embedding."),
             ("output", f"{TEXT_PREFIX}.output_layer.")]
    for stage in range(cfg.pp):
        for chunk, shapes in rank_param_shapes(plan, stage).items():
            for kind, prefix in kinds:
                names = [n for n in shapes if n.startswith(prefix)]
                if kind in shown or not names:
                    continue
                shown.add(kind)
                w(f"  {kind} (stage {stage}" + (f" chunk {chunk}" if cfg.vpp > 1 else "") + "):\n")
                for n in names:
                    w(f"    {n[len(prefix):] if prefix.endswith('.0.') else n}: {tuple(shapes[n])}\n")

    problems = check_plan(plan)
    w(f"\nstatic check of {len(plan.entries)} primitive strategies: "
      + ("ok" if not problems else f"{len(problems)} problem(s)") + "\n")
    for pr in problems:
        w(f"  {pr}\n")

    w(f"\nmemory per device ({dtype} weights"
      + (", fp32 grads, fp32 master + Adam" if dtype == "bf16" else ", fp32 grads + Adam")
      + (f" sharded over dp {cfg.dp}" if cfg.use_distributed_optimizer else "") + "), GiB:\n")
    w("  stage   params(B)  weights    grads optimizer activations    total  in-flight\n")
    over = []
    for st in estimate_memory(plan, dtype=dtype, vision_patches=args.vision_patches, dpo=args.dpo,
                              dpo_reference_copy=args.dpo and lora is None):
        w(f"  {st.stage:5d} {st.params / 1e9:11.3f} {_fmt_gib(st.weight_bytes)} {_fmt_gib(st.grad_bytes)} "
          f"{_fmt_gib(st.optimizer_bytes)}    {_fmt_gib(st.activation_bytes)} {_fmt_gib(st.total_bytes)} "
          f"{st.in_flight:10d}\n")
        if st.total_bytes > args.device_memory_gb * GiB:
            over.append((st.stage, st.total_bytes / GiB))
    for stage, gib in over:
        w(f"WARNING: stage {stage} needs about {gib:.1f} GiB per device, more than --device-memory-gb "
          f"{args.device_memory_gb:g}: raise tp/pp, enable recompute or the distributed optimizer\n")
    return 1 if problems else 0


def main():
    sys.exit(run())


if __name__ == "__main__":
    main()
