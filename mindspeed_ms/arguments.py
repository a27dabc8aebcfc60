"""The Megatron / MindSpeed-MM command line: one parser, a typed result, checks before any compute.

Every flag of the MindSpeed-MM Qwen2-VL scripts (fine-tuning, DPO, LoRA) is declared once, in
`TrainingArgs`, with its type, default and what it does on this framework. A flag we do not know
is an error (never silently ignored); a flag that only tunes Ascend kernels or torch internals is
accepted and listed once at start-up when it has no effect on the backend in use.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence


class ArgumentError(ValueError):
    """A bad command line or a command line that disagrees with its JSON files (one paragraph)."""


# What a flag does here: "used" (read by the framework), "ascend" (acts on Ascend, no effect on
# CPU), "noop" (tunes a torch/Megatron internal that does not exist here), "model" (describes the
# model structure, which model.json defines: checked against it).
USED, ASCEND, NOOP, MODEL = "used", "ascend", "noop", "model"


def _f(default, help, effect=USED, choices=None, nargs=None, why=None):
    """`why`: for a flag without effect (NOOP, or ASCEND on CPU), the reason its start-up notice gives."""
    return field(default=default, metadata={"help": help, "effect": effect, "choices": choices, "nargs": nargs,
                                            "why": why})


@dataclass
class TrainingArgs:
    # ---- parallelism -------------------------------------------------------------------------
    tensor_model_parallel_size: int = _f(1, "tensor-parallel size (TP)")
    pipeline_model_parallel_size: int = _f(1, "pipeline-parallel size (PP)")
    virtual_pipeline_model_parallel_size: Optional[int] = _f(None, "virtual pipeline chunks per stage (VPP)")
    context_parallel_size: int = _f(1, "context-parallel size (CP)")
    context_parallel_algo: str = _f("ulysses_cp_algo", "context-parallel algorithm",
                                    choices=["ulysses_cp_algo", "megatron_cp_algo", "hybrid_cp_algo"])
    sequence_parallel: bool = _f(False, "sequence parallelism inside TP regions (Ascend)", ASCEND)
    unaligned_linear: bool = _f(False, "allow sequence lengths not divisible by TP with --sequence-parallel", NOOP,
                                why="unaligned lengths are always padded to the split and masked here")
    use_distributed_optimizer: bool = _f(False, "shard optimizer states over DP (Ascend parallel optimizer)", ASCEND)
    enable_dummy_optimizer: bool = _f(False, "allow stages / runs whose parameters are all frozen")
    recompute_granularity: Optional[str] = _f(None, "activation recomputation granularity", ASCEND,
                                              choices=["full", "selective"])
    recompute_method: Optional[str] = _f(None, "activation recomputation method", ASCEND, choices=["uniform", "block"])
    recompute_num_layers: Optional[int] = _f(None, "layers per recomputation unit", ASCEND)
    reuse_fp32_param: bool = _f(False, "MindSpeed memory trick sharing bf16/fp32 parameter storage", NOOP,
                                why="a torch storage trick; MindSpore's optimizer keeps its own fp32 state")
    distributed_backend: str = _f("nccl", "collective backend name (msrun picks HCCL on Ascend, MindSpore's own on CPU)",
                                  NOOP, choices=["nccl", "hccl", "gloo", "mccl"],
                                  why="msrun picks HCCL on Ascend and MindSpore's own collectives on CPU")
    distributed_timeout_minutes: int = _f(10, "collective timeout (torch.distributed)", NOOP,
                                          why="a torch.distributed setting; msrun has its own timeouts")
    ai_framework: str = _f("mindspore", "framework that runs the job (this package is MindSpore-native)",
                           choices=["mindspore"])

    # ---- batch, schedule, optimizer ---------------------------------------------------------
    micro_batch_size: int = _f(1, "samples per micro-batch per DP rank")
    global_batch_size: Optional[int] = _f(None, "samples per optimizer step over all DP ranks (default mbs x DP)")
    seq_length: Optional[int] = _f(None, "maximum tokens per sample (truncation length)")
    train_iters: Optional[int] = _f(None, "optimizer steps to train")
    lr: Optional[float] = _f(None, "peak learning rate")
    min_lr: float = _f(0.0, "learning rate at the end of the decay")
    lr_decay_style: str = _f("linear", "learning-rate decay", choices=["constant", "linear", "cosine"])
    lr_decay_iters: Optional[int] = _f(None, "decay length in steps (default --train-iters)")
    lr_warmup_fraction: Optional[float] = _f(None, "warm-up length as a fraction of the decay length")
    lr_warmup_iters: int = _f(0, "warm-up length in steps")
    lr_warmup_init: float = _f(0.0, "learning rate at the start of warm-up")
    optimizer: str = _f("adam", "optimizer (adam = AdamW with decoupled weight decay)", choices=["adam"])
    weight_decay: float = _f(0.01, "decoupled weight decay (not applied to biases and 1-D parameters)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    clip_grad: float = _f(1.0, "global gradient-norm clipping (0 = off)")
    seed: int = _f(1234, "seed for initialisation, data order and dropout")
    bf16: bool = _f(False, "bf16 compute (Ascend); fp32 on CPU")
    fp16: bool = _f(False, "fp16 compute (not supported by the Qwen2-VL recipes)")
    calculate_per_sample_loss: bool = _f(False, "token mean per sample, then mean over samples")
    calculate_per_token_loss: bool = _f(False, "sum over the global batch's tokens / its valid-token count")
    variable_seq_lengths: bool = _f(False, "pipeline stages exchange variable-length activations", NOOP,
                                    why="the sharded step pads every micro-batch to one static shape, so stages "
                                        "always exchange the same size")

    # ---- kernel / torch-internal switches ------------------------------------------------------
    use_mcore_models: bool = _f(False, "Megatron-core model classes (always the case here)", NOOP,
                                why="the model always has Megatron-core's module names and layout")
    use_fused_rmsnorm: bool = _f(False, "fused RMSNorm kernel", NOOP,
                                 why="MindSpore's graph compiler fuses the norm itself; there is no kernel switch")
    use_fused_swiglu: bool = _f(False, "fused SwiGLU kernel", NOOP,
                                why="MindSpore's graph compiler fuses the activation itself; there is no kernel switch")
    use_flash_attn: bool = _f(False, "flash attention kernel (flash_attention_score)", ASCEND)
    no_masked_softmax_fusion: bool = _f(False, "disable the fused masked softmax", NOOP,
                                        why="a Megatron CUDA kernel switch; the softmax here is MindSpore's")
    no_gradient_accumulation_fusion: bool = _f(False, "disable the fused weight-gradient accumulation", NOOP,
                                               why="a Megatron CUDA kernel switch; gradients accumulate in fp32 "
                                                   "buffers here")
    num_workers: int = _f(2, "data-loader workers")
    tokenizer_type: str = _f("NullTokenizer", "Megatron tokenizer type (the tokenizer comes from data.json's "
                             "model_name_or_path)", NOOP,
                             why="the tokenizer is data.json's preprocess_parameters.model_name_or_path, as in MindSpeed-MM")

    # ---- model structure (model.json defines the model; these are checked against it) ---------
    vocab_size: Optional[int] = _f(None, "vocabulary size (must equal model.json's)", MODEL)
    make_vocab_size_divisible_by: int = _f(128, "vocabulary padding (model.json's size is used unpadded)", MODEL)
    normalization: Optional[str] = _f(None, "text-decoder norm (must equal model.json's)", MODEL,
                                      choices=["LayerNorm", "RMSNorm"])
    swiglu: bool = _f(False, "SwiGLU MLP (must agree with model.json's gated_linear_unit)", MODEL)
    num_layers: Optional[int] = _f(None, "text-decoder layers (must equal model.json's)", MODEL)
    hidden_size: Optional[int] = _f(None, "text-decoder hidden size (must equal model.json's)", MODEL)
    ffn_hidden_size: Optional[int] = _f(None, "text-decoder FFN size (must equal model.json's)", MODEL)
    num_attention_heads: Optional[int] = _f(None, "text-decoder heads (must equal model.json's)", MODEL)
    group_query_attention: bool = _f(False, "grouped-query attention (must agree with model.json)", MODEL)
    num_query_groups: Optional[int] = _f(None, "KV heads (must equal model.json's)", MODEL)
    max_position_embeddings: Optional[int] = _f(None, "rope table length (model.json's is used)", MODEL)
    untie_embeddings_and_output_weights: bool = _f(False, "untied output layer (must agree with model.json)", MODEL)

    # ---- data and model files ----------------------------------------------------------------
    mm_data: Optional[str] = _f(None, "data.json (datasets, preprocessing, data loader)")
    mm_model: Optional[str] = _f(None, "model.json (model structure, freezing)")
    mm_tool: Optional[str] = _f(None, "tools.json (MindSpeed-MM tool settings)", NOOP,
                                why="MindSpeed-MM's profiling / memory-snapshot tools have no counterpart here")

    # ---- checkpoints ---------------------------------------------------------------------------
    load: Optional[str] = _f(None, "checkpoint directory to start from (release or iter_N, MM layout)")
    save: Optional[str] = _f(None, "directory to save checkpoints to")
    save_interval: Optional[int] = _f(None, "save every N steps (and always at the end)")
    ckpt_format: str = _f("torch", "checkpoint file format", choices=["torch", "safetensors"])
    no_load_optim: bool = _f(False, "do not load optimizer / lr-scheduler state")
    no_load_rng: bool = _f(False, "do not load RNG state")
    no_save_optim: bool = _f(False, "do not save optimizer / lr-scheduler state")
    no_save_rng: bool = _f(False, "do not save RNG state")
    finetune: bool = _f(False, "load weights only; start at iteration 0 with a fresh optimizer and data order")

    # ---- logging and evaluation --------------------------------------------------------------
    log_interval: int = _f(100, "steps between log lines")
    log_tps: bool = _f(False, "log MindSpeed-MM's 'tokens per sample' (the padded sequence length the language "
                              "model sees; the scripts turn it into tokens/s) and the real (non-padding) tokens per sample")
    eval_interval: int = _f(1000, "steps between validation runs")
    eval_iters: int = _f(100, "validation batches per run")
    tensorboard_dir: Optional[str] = _f(None, "write TensorBoard scalars here")
    wandb_project: str = _f("", "W&B project to log the scalars to (empty: off; needs the wandb package)")
    wandb_exp_name: str = _f("", "W&B run name (required with --wandb-project)")
    wandb_save_dir: str = _f("", "directory of the W&B run files (default <--save>/wandb)")

    # ---- DPO (posttrain_qwen2vl_dpo.py) ------------------------------------------------------
    dpo_beta: float = _f(0.1, "DPO beta")
    dpo_loss_type: str = _f("sigmoid", "DPO loss", choices=["sigmoid"])
    dpo_label_smoothing: float = _f(0.0, "DPO label smoothing (0 to 0.5)")
    pref_ftx: float = _f(0.0, "weight of the SFT term on chosen answers in the DPO loss")
    ref_model: Optional[str] = _f(None, "reference model checkpoint (default --load)")

    # ---- LoRA ---------------------------------------------------------------------------------
    lora_target_modules: List[str] = field(default_factory=list, metadata={
        "help": "module names that get LoRA adapters", "effect": USED, "choices": None, "nargs": "+"})
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha (scale alpha/r)")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    load_base_model: Optional[str] = _f(None, "base-model checkpoint under LoRA weights")

    # ---- derived (not flags) -------------------------------------------------------------------
    world_size: int = field(default=1, metadata={"derived": True})
    data_parallel_size: int = field(default=1, metadata={"derived": True})
    backend: str = field(default="CPU", metadata={"derived": True})

    @property
    def grad_acc_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)

    @property
    def loss_mode(self) -> str:
        if self.calculate_per_token_loss:
            return "per_token"
        if self.calculate_per_sample_loss:
            return "per_sample"
        return "default"


def _flag_fields():
    return [f for f in dataclasses.fields(TrainingArgs) if not f.metadata.get("derived")]


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit 2; we want one clear paragraph
        raise ArgumentError(f"{self.prog}: {message}. Run with --help for the list of flags.")


def build_parser(prog: str = "pretrain_vlm.py") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, allow_abbrev=False, description="Qwen2-VL training with MindSpeed-MM's command line.")
    for f in _flag_fields():
        flag = "--" + f.name.replace("_", "-")
        meta, default = f.metadata, _default(f)
        help_text = meta["help"] + {ASCEND: " [acts on Ascend only]", NOOP: " [accepted; no effect here]",
                                    MODEL: " [checked against model.json]", USED: ""}[meta["effect"]]
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=default, help=help_text)
            continue
        typ = {"int": int, "float": float, "str": str, "Optional[int]": int, "Optional[float]": float,
               "Optional[str]": str, "List[str]": str}[f.type]
        kw = dict(type=typ, default=default, help=help_text)
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("nargs"):
            kw["nargs"] = meta["nargs"]
        p.add_argument(flag, **kw)
    return p


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = "pretrain_vlm.py") -> TrainingArgs:
    """Parse the command line into `TrainingArgs` (no file or hardware checks: see `validate_args`)."""
    parser = build_parser(prog)
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        bad = [u for u in unknown if u.startswith("-")] or unknown
        raise ArgumentError(
            f"{prog}: unknown flag(s) {' '.join(bad)}. Every flag must be one this framework knows (the "
            f"Megatron / MindSpeed-MM flags of the Qwen2-VL scripts); check the spelling, or run with --help "
            f"for the list. Nothing is ignored silently.")
    return TrainingArgs(**vars(ns))


def explicitly_set(args: TrainingArgs) -> List[str]:
    """Names of the flags whose value differs from the default (i.e. the user set them)."""
    return [f.name for f in _flag_fields() if getattr(args, f.name) != _default(f)]


def no_effect_flags(args: TrainingArgs, backend: str) -> List[str]:
    """Flags given on the command line that do nothing on `backend` ("CPU" or "Ascend")."""
    out = []
    for f in _flag_fields():
        if f.name not in explicitly_set(args):
            continue
        effect = f.metadata["effect"]
        if effect == NOOP or (effect == ASCEND and backend != "Ascend"):
            out.append("--" + f.name.replace("_", "-"))
    if backend != "Ascend" and args.bf16:
        out.append("--bf16 (CPU runs in fp32: bf16 matmul has no CPU kernel)")
    return out


def _why(flag: str, backend: str) -> str:
    meta = {f.name: f.metadata for f in _flag_fields()}[flag[2:].replace("-", "_")]
    if meta.get("why"):
        return f" ({meta['why']})"
    if meta["effect"] == ASCEND:
        return " (it acts on Ascend only)"
    return ""


def _err(msg: str):
    raise ArgumentError(" ".join(msg.split()))


def _check_file(flag: str, path: Optional[str], what: str):
    if not path:
        _err(f"{flag} is required: it names the {what}.")
    if not os.path.isfile(path):
        _err(f"{flag} {path}: no such file (the {what}); run from the repository root or give an absolute path.")


def check_against_model_json(args: TrainingArgs, model, path: str) -> List[str]:
    """Compare the model-structure flags with model.json (`model` is its `Qwen2VLConfig`, derived
    fields filled). model.json defines the model, as in MindSpeed-MM; a flag that describes a
    different model is an error, because the run would silently differ from what the script says
    (and a checkpoint would not fit). Returns notices for differences that change nothing."""
    td = model.text
    notices = []
    for name in ("vocab_size", "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                 "num_query_groups"):
        got, want = getattr(args, name), getattr(td, name)
        if got is not None and want is not None and got != want:
            _err(f"--{name.replace('_', '-')} {got} disagrees with {path}: text_decoder.{name} = {want}. "
                 f"model.json defines the model (and its checkpoint has that shape); remove the flag from the "
                 f"script or set it to {want}.")
    if args.normalization and args.normalization != td.normalization:
        _err(f"--normalization {args.normalization} disagrees with {path}: text_decoder.normalization = "
             f"{td.normalization}; remove the flag or make them equal.")
    if args.swiglu and not td.gated_linear_unit:
        _err(f"--swiglu is given but {path} has text_decoder.gated_linear_unit = false; remove one of them.")
    if args.group_query_attention and not td.group_query_attention:
        _err(f"--group-query-attention is given but {path} has text_decoder.group_query_attention = false.")
    if args.untie_embeddings_and_output_weights and not td.untie_embeddings_and_output_weights:
        _err(f"--untie-embeddings-and-output-weights is given but {path} ties them "
             f"(text_decoder.untie_embeddings_and_output_weights = false).")
    if args.max_position_embeddings is not None and args.max_position_embeddings != td.max_position_embeddings:
        notices.append(f"--max-position-embeddings {args.max_position_embeddings} differs from {path} "
                       f"({td.max_position_embeddings}); model.json's value is used")
    if args.make_vocab_size_divisible_by != 128:
        notices.append(f"--make-vocab-size-divisible-by {args.make_vocab_size_divisible_by}: the vocabulary is "
                       f"model.json's {td.vocab_size}, unpadded (as in MindSpeed-MM)")
    return notices


def check_value_ranges(args: TrainingArgs):
    """Flag values outside what the optimizer and schedule accept (torch's AdamW and Megatron's
    scheduler refuse them too); checked before the model is built, one message per flag."""
    def need(ok, flag, value, what):
        if not ok:
            _err(f"{flag} {value}: {what}.")
    if args.lr is not None:
        need(args.lr >= 0, "--lr", args.lr, "the learning rate must be >= 0")
    need(args.min_lr >= 0, "--min-lr", args.min_lr, "the final learning rate must be >= 0")
    if args.lr is not None:
        need(args.min_lr <= args.lr, "--min-lr", args.min_lr, f"it is above --lr {args.lr}; the decay goes from "
             f"--lr down to --min-lr, so give a value <= {args.lr}")
    need(args.lr_warmup_init >= 0, "--lr-warmup-init", args.lr_warmup_init, "the learning rate must be >= 0")
    for flag, v in (("--adam-beta1", args.adam_beta1), ("--adam-beta2", args.adam_beta2)):
        need(0 <= v < 1, flag, v, "an AdamW beta must be in [0, 1) (e.g. 0.9 / 0.999)")
    need(args.adam_eps > 0, "--adam-eps", args.adam_eps, "AdamW's epsilon must be positive (e.g. 1e-8)")
    need(args.weight_decay >= 0, "--weight-decay", args.weight_decay, "the weight decay must be >= 0")
    need(args.clip_grad >= 0, "--clip-grad", args.clip_grad, "the gradient-norm bound must be >= 0 (0 = off)")
    if args.lr_warmup_fraction is not None:
        need(0 <= args.lr_warmup_fraction <= 1, "--lr-warmup-fraction", args.lr_warmup_fraction,
             "a fraction of the decay length must be in [0, 1]")
    need(args.lr_warmup_iters >= 0, "--lr-warmup-iters", args.lr_warmup_iters, "must be >= 0")
    if args.lr_decay_iters is not None:
        need(args.lr_decay_iters > 0, "--lr-decay-iters", args.lr_decay_iters, "must be positive")
    need(0 <= args.seed < 2 ** 32, "--seed", args.seed, "a seed is in [0, 2**32)")
    need(args.eval_iters >= 0, "--eval-iters", args.eval_iters, "must be >= 0")
    need(0 <= args.lora_dropout < 1, "--lora-dropout", args.lora_dropout, "a dropout probability is in [0, 1)")


def check_schedule(args: TrainingArgs):
    """The learning-rate schedule of these flags can be built (warm-up shorter than the decay ...)."""
    from mindspeed_ms.training.lr_schedule import LRSchedule
    try:
        LRSchedule.from_args(args)
    except ValueError as e:
        _err(f"{e}.")


@dataclass
class Startup:
    """What `validate_args` established before any compute."""
    notices: List[str]
    model: object          # mindspeed_ms.config.model_config.Qwen2VLConfig
    parallel: object       # mindspeed_ms.parallel.config.ParallelConfig


def validate_args(args: TrainingArgs, world_size: int = 1, backend: str = "CPU",
                  require_data: bool = True) -> Startup:
    """Check the arguments and their files before any compute; fill the derived fields.

    Raises `ArgumentError` with one paragraph that names the flag/file and what to do."""
    from mindspeed_ms.config.model_config import ModelConfigError, load_model_json
    from mindspeed_ms.parallel.config import check_backend_supports, validate_parallel_config
    from mindspeed_ms.parallel.layout import ParallelConfigError

    notices = []
    args.world_size, args.backend = world_size, backend
    if require_data:
        _check_file("--mm-data", args.mm_data, "data.json with the datasets")
        from mindspeed_ms.config.data_config import DataConfigError, load_data_json, no_effect_notices
        try:
            notices += no_effect_notices(load_data_json(args.mm_data))
        except DataConfigError:
            pass                # reported, still before any compute, when the data feed is built
    _check_file("--mm-model", args.mm_model, "model.json with the model structure")
    from mindspeed_ms.config.model_json_checks import check_model_json
    try:
        check_model_json(args.mm_model)
        model = load_model_json(args.mm_model)
        notices += check_model_json(args.mm_model, model)
    except (ModelConfigError, ValueError) as e:
        _err(f"--mm-model {args.mm_model}: {e}")
    notices += check_against_model_json(args, model, args.mm_model)
    from mindspeed_ms.config.model_config import model_no_effect_notices
    notices += model_no_effect_notices(model)

    if args.calculate_per_sample_loss and args.calculate_per_token_loss:
        _err("--calculate-per-sample-loss and --calculate-per-token-loss are mutually exclusive: choose one "
             "(or neither for the default token mean per micro-batch).")
    if args.fp16:
        _err("--fp16 is not supported by the Qwen2-VL recipes: use --bf16 (Ascend) or nothing (fp32).")
    if args.train_iters is None or args.train_iters <= 0:
        _err(f"--train-iters must be a positive number of optimizer steps (got {args.train_iters}).")
    if args.lr is None:
        _err("--lr is required (the peak learning rate).")
    if args.lr_warmup_fraction is not None and args.lr_warmup_iters:
        _err("--lr-warmup-fraction and --lr-warmup-iters are mutually exclusive (Megatron rule): give one.")
    check_value_ranges(args)
    if args.seq_length is None or args.seq_length <= 0:
        _err(f"--seq-length must be a positive number of tokens (got {args.seq_length}).")
    if args.micro_batch_size <= 0:
        _err(f"--micro-batch-size must be positive (got {args.micro_batch_size}).")
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    dp = world_size // max(1, tp * pp * cp)
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * max(dp, 1)
    if args.global_batch_size % (args.micro_batch_size * max(dp, 1)):
        mbs = args.micro_batch_size
        _err(f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size x DP = "
             f"{mbs} x {dp} = {mbs * dp}: every DP rank needs a whole number of micro-batches per step "
             f"(gradient accumulation); e.g. --global-batch-size {mbs * dp * max(1, args.global_batch_size // (mbs * dp))}.")
    try:
        pcfg = validate_parallel_config(args, model, world_size)
        notices += pcfg.notices
        notices += check_backend_supports(pcfg, backend)
    except ParallelConfigError as e:
        _err(str(e))
    args.data_parallel_size = pcfg.dp
    check_schedule(args)

    if args.load and not os.path.isdir(args.load):
        _err(f"--load {args.load}: no such directory. Give a checkpoint directory (with "
             f"latest_checkpointed_iteration.txt, as written by mm-convert hf_to_mm or by --save), or drop --load "
             f"to train from random initialisation.")
    if args.load and not os.path.isfile(os.path.join(args.load, "latest_checkpointed_iteration.txt")):
        _err(f"--load {args.load} holds no checkpoint: latest_checkpointed_iteration.txt is missing. Convert an HF "
             f"checkpoint with mm-convert Qwen2VLConverter hf_to_mm --cfg.mm_dir {args.load} ..., or point --load "
             f"at the --save directory of an earlier run.")
    if args.save_interval is not None and args.save_interval <= 0:
        _err(f"--save-interval must be positive (got {args.save_interval}).")
    if args.log_interval <= 0 or args.eval_interval <= 0:
        _err("--log-interval and --eval-interval must be positive.")
    from mindspeed_ms.training.wandb_writer import wandb_problem
    if wandb_problem(args):
        _err(wandb_problem(args))
    notices += [flag if "(" in flag else f"{flag}: no effect on {backend}" + _why(flag, backend)
                for flag in no_effect_flags(args, backend)]
    return Startup(notices=notices, model=model, parallel=pcfg)
