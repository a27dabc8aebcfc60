"""Parallel configuration from the Megatron/MindSpeed-MM flags and model.json, with validation.

`validate_parallel_config(args, model, world_size)` is what the training entry point calls before
it builds anything; `check_backend_supports(cfg, backend)` stops TP/PP/CP > 1 on a backend where
MindSpore's semi-auto parallel cannot run (CPU).
"""
from dataclasses import dataclass, field
from typing import List, Optional

from mindspeed_ms.parallel.layout import ParallelConfigError, PipelineLayout, build_pipeline_layout

CP_ALGOS = ("ulysses_cp_algo",)
RECOMPUTE_GRANULARITIES = ("full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")


@dataclass
class RecomputeConfig:
    """Megatron recompute settings of one sub-model (ViT or LLM)."""
    granularity: Optional[str] = None     # None | "full" | "selective"
    method: Optional[str] = None          # "uniform" | "block" (full only)
    num_layers: Optional[int] = None

    def recomputed_layers(self, layers: range) -> List[int]:
        """Global indices of the layers (of one pipeline chunk) whose whole forward is recomputed.

        uniform: the chunk's layers are cut into groups of num_layers and every group is recomputed
        (Megatron checkpoints each group's input), so every layer is recomputed; block: the first
        num_layers layers of the chunk are recomputed, the rest keep their activations."""
        if self.granularity != "full":
            return []
        if self.method == "block":
            return list(layers)[:self.num_layers]
        return list(layers)


@dataclass
class ParallelConfig:
    world_size: int
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    cp: int = 1
    cp_algo: str = "ulysses_cp_algo"
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    enable_dummy_optimizer: bool = False
    micro_batch_size: int = 1
    global_batch_size: Optional[int] = None
    seq_length: Optional[int] = None
    text_recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    vision_recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    layout: Optional[PipelineLayout] = None
    frozen_stages: List[int] = field(default_factory=list)
    notices: List[str] = field(default_factory=list)

    @property
    def dp(self):
        return self.world_size // (self.tp * self.pp * self.cp)

    @property
    def devices_per_stage(self):
        return self.world_size // self.pp

    @property
    def num_micro_batches(self):
        if self.global_batch_size is None:
            return 1
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    @property
    def pipeline_micro_batches(self):
        """Micro-batches the step runs: with pp > 1 at least pp, because MindSpore's `Pipeline`
        needs micro_size >= stages; the missing ones are empty (`empty_micro_batches`: loss
        weight 0, so the loss and the gradients are those of the real ones)."""
        m = self.num_micro_batches
        return max(m, self.pp) if self.pp > 1 else m

    @property
    def seq_split(self):
        """How many ways the text sequence is split outside attention: CP always, and TP too in
        the sequence-parallel regions (norms, residuals) when --sequence-parallel is on."""
        return self.cp * (self.tp if self.sequence_parallel else 1)

    def padded_seq_length(self, seq_len: int) -> int:
        """Unaligned lengths (MindSpeed's unaligned Ulysses CP / --unaligned-linear SP) are padded up
        to a multiple of the split; the padding is masked so the loss is unchanged."""
        m = self.seq_split
        return -(-seq_len // m) * m

    def is_parallel(self):
        return self.tp > 1 or self.pp > 1 or self.cp > 1


def _get(args, name, default=None):
    if isinstance(args, dict):
        v = args.get(name, default)
    else:
        v = getattr(args, name, default)
    return default if v is None else v


def _pos_int(value, flag):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParallelConfigError(f"{flag} must be a positive integer, got {value!r}")
    return value


def _recompute(granularity, method, num_layers, where) -> RecomputeConfig:
    if granularity is None:
        return RecomputeConfig()
    if granularity not in RECOMPUTE_GRANULARITIES:
        raise ParallelConfigError(f"{where} recompute_granularity {granularity!r} is not one of "
                                  f"{RECOMPUTE_GRANULARITIES}")
    if granularity == "full":
        if method not in RECOMPUTE_METHODS:
            raise ParallelConfigError(f"{where} recompute_granularity 'full' needs recompute_method in "
                                      f"{RECOMPUTE_METHODS}, got {method!r}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ParallelConfigError(f"{where} recompute_granularity 'full' needs recompute_num_layers >= 1, "
                                      f"got {num_layers!r}")
    return RecomputeConfig(granularity, method if granularity == "full" else None,
                           num_layers if granularity == "full" else None)


def parallel_config_from_args(args, model, world_size: int) -> ParallelConfig:
    """Read the flags (argparse namespace or dict with Megatron dest names) without validating."""
    tp = _pos_int(_get(args, "tensor_model_parallel_size", 1), "--tensor-model-parallel-size")
    pp = _pos_int(_get(args, "pipeline_model_parallel_size", 1), "--pipeline-model-parallel-size")
    vpp = _pos_int(_get(args, "virtual_pipeline_model_parallel_size", 1), "--virtual-pipeline-model-parallel-size")
    cp = _pos_int(_get(args, "context_parallel_size", 1), "--context-parallel-size")
    world_size = _pos_int(world_size, "world size (number of devices)")
    # model.json recompute_* keys configure each sub-model; the command-line flags apply to the text
    # decoder when its model.json entry has none (Megatron's flags describe the language model).
    t = model.text
    if t.recompute_granularity is not None:
        text_rc = _recompute(t.recompute_granularity, t.recompute_method, t.recompute_num_layers,
                             "model.json text_decoder")
    else:
        gran = _get(args, "recompute_granularity")
        if gran is None and _get(args, "recompute_activations", False):
            gran = "selective"
        text_rc = _recompute(gran, _get(args, "recompute_method"), _get(args, "recompute_num_layers"),
                             "--recompute-granularity/--recompute-method/--recompute-num-layers")
    v = model.vision
    vision_rc = _recompute(v.recompute_granularity, v.recompute_method, v.recompute_num_layers,
                           "model.json image_encoder.vision_encoder")
    gbs = _get(args, "global_batch_size")
    return ParallelConfig(
        world_size=world_size, tp=tp, pp=pp, vpp=vpp, cp=cp,
        cp_algo=_get(args, "context_parallel_algo", "ulysses_cp_algo"),
        sequence_parallel=bool(_get(args, "sequence_parallel", False)),
        use_distributed_optimizer=bool(_get(args, "use_distributed_optimizer", False)),
        enable_dummy_optimizer=bool(_get(args, "enable_dummy_optimizer", False)),
        micro_batch_size=_pos_int(_get(args, "micro_batch_size", 1), "--micro-batch-size"),
        global_batch_size=None if gbs is None else _pos_int(gbs, "--global-batch-size"),
        seq_length=_get(args, "seq_length"), text_recompute=text_rc, vision_recompute=vision_rc)


def validate_parallel_config(args, model, world_size: int) -> ParallelConfig:
    """Build and validate the parallel configuration; raise ParallelConfigError naming the numbers."""
    cfg = parallel_config_from_args(args, model, world_size)
    tp, pp, vpp, cp = cfg.tp, cfg.pp, cfg.vpp, cfg.cp
    mp = tp * pp * cp
    if world_size % mp:
        raise ParallelConfigError(
            f"world size {world_size} is not divisible by tp {tp} x pp {pp} x cp {cp} = {mp}: the devices "
            f"are arranged as world = dp x tp x pp x cp (choose sizes whose product divides {world_size})")
    if vpp > 1 and pp == 1:
        raise ParallelConfigError(f"--virtual-pipeline-model-parallel-size {vpp} needs "
                                  f"--pipeline-model-parallel-size > 1 (got 1)")
    if cp > 1 and cfg.cp_algo not in CP_ALGOS:
        raise ParallelConfigError(f"--context-parallel-algo {cfg.cp_algo!r}: this plan implements "
                                  f"{', '.join(CP_ALGOS)} (MindSpeed-MM's Qwen2-VL scripts use it)")
    if cfg.sequence_parallel and tp == 1:
        cfg.sequence_parallel = False
        cfg.notices.append("--sequence-parallel has no effect with --tensor-model-parallel-size 1; "
                           "turned off (as Megatron does)")
    _check_tp_divisibility(model, tp, cp)
    cfg.layout = build_pipeline_layout(model.vision.pipeline_num_layers, model.text.pipeline_num_layers,
                                       pp, vpp, model.vision.num_layers, model.text.num_layers)
    _check_frozen_stages(cfg, model)
    _check_recompute(cfg)
    if cfg.global_batch_size is not None:
        per_step = cfg.micro_batch_size * cfg.dp
        if cfg.global_batch_size % per_step:
            raise ParallelConfigError(
                f"--global-batch-size {cfg.global_batch_size} is not divisible by --micro-batch-size "
                f"{cfg.micro_batch_size} x dp {cfg.dp} = {per_step}")
        nmb = cfg.num_micro_batches
        if pp > 1 and nmb < pp:
            # Megatron runs m < pp micro-batches (its 1F1B warm-up is min(m, pp - stage)); MindSpore's
            # Pipeline does not, so the step is padded with empty micro-batches
            cfg.notices.append(
                f"{nmb} micro-batch(es) per step (global batch {cfg.global_batch_size} / (micro batch "
                f"{cfg.micro_batch_size} x dp {cfg.dp})) is fewer than the {pp} pipeline stages: each step "
                f"also runs {pp - nmb} empty micro-batch(es) with no loss weight (MindSpore's pipeline needs "
                f"micro-batches >= stages); bubble cost: {2 * pp - 1} pipeline slots per step instead of "
                f"Megatron's {nmb + pp - 1}, {nmb / (2 * pp - 1):.0%} of a stage's time does real work")
        if vpp > 1 and nmb > pp and nmb % pp:
            raise ParallelConfigError(
                f"the interleaved (virtual) pipeline needs the number of micro-batches ({nmb}) to be a "
                f"multiple of --pipeline-model-parallel-size {pp}")
    if cfg.seq_length is not None and cfg.seq_split > 1 and cfg.seq_length % cfg.seq_split:
        cfg.notices.append(
            f"--seq-length {cfg.seq_length} is not divisible by the sequence split {cfg.seq_split} "
            f"(cp {cp}" + (f" x tp {tp} for --sequence-parallel" if cfg.sequence_parallel else "")
            + f"): sequences are padded to a multiple of {cfg.seq_split} (masked; unaligned CP/SP)")
    return cfg


def _check_tp_divisibility(model, tp: int, cp: int):
    t, v, p = model.text, model.vision, model.projector
    vocab = t.vocab_size
    checks = [
        ("text_decoder.num_query_groups (kv heads)", t.num_query_groups, tp,
         "mm-convert splits whole KV groups per tensor-parallel rank"),
        ("text_decoder.num_attention_heads", t.num_attention_heads, tp, "attention heads are split across tp"),
        ("text_decoder.ffn_hidden_size", t.ffn_hidden_size, tp, "linear_fc1/linear_fc2 are split across tp"),
        ("text_decoder.vocab_size", vocab, tp,
         "word_embeddings and output_layer are split by vocabulary rows (MindSpeed-MM keeps model.json's "
         "vocabulary unpadded): choose a tp that divides it"),
        ("image_encoder.vision_encoder.num_attention_heads", v.num_attention_heads, tp,
         "the ViT's qkv is split by whole heads"),
        ("image_encoder.vision_encoder.ffn_hidden_size", v.ffn_hidden_size, tp, "the ViT MLP is split across tp"),
        ("image_encoder.vision_projector.ffn_hidden_size", p.ffn_hidden_size, tp,
         "the projector MLP is split across tp"),
    ]
    if cp > 1:
        checks.append(("text_decoder.num_attention_heads", t.num_attention_heads, tp * cp,
                       f"Ulysses context parallel gives each of the tp {tp} x cp {cp} ranks whole heads"))
    for name, value, div, why in checks:
        if value % div:
            label = f"tp {tp}" if div == tp else f"tp {tp} x cp {cp} = {div}"
            raise ParallelConfigError(f"{name} {value} is not divisible by {label}: {why}")


def _check_frozen_stages(cfg: ParallelConfig, model):
    """A stage whose parameters are all frozen produces no gradient; MindSpeed-MM then needs
    --enable-dummy-optimizer (README: vision frozen with [30,2,0,0] / [0,11,10,7])."""
    v_train = not model.vision.freeze
    p_train = not model.projector.freeze
    t_train = True      # model.json has no text_decoder.freeze: the LLM always trains (fully or with LoRA)
    frozen = []
    for stage in range(cfg.pp):
        trainable = False
        for pl in cfg.layout.stage_placements(stage):
            if (len(pl.vit_layers) or pl.patch_embed) and v_train:
                trainable = True
            if pl.projector and p_train:
                trainable = True
            if (len(pl.llm_layers) or pl.embedding or pl.output_layer) and t_train:
                trainable = True
        if not trainable:
            frozen.append(stage)
    cfg.frozen_stages = frozen
    if frozen and not cfg.enable_dummy_optimizer:
        stages = ", ".join(str(s) for s in frozen)
        raise ParallelConfigError(
            f"pipeline stage(s) {stages} hold only frozen parameters with vision layers "
            f"{cfg.layout.vit_chunks if cfg.vpp > 1 else cfg.layout.vit_chunks[0]} and text layers "
            f"{cfg.layout.llm_chunks if cfg.vpp > 1 else cfg.layout.llm_chunks[0]}: they would have no "
            f"gradient; add --enable-dummy-optimizer (as MindSpeed-MM requires) or move trainable layers there")


def _check_recompute(cfg: ParallelConfig):
    for name, rc, chunks in (("text_decoder", cfg.text_recompute, cfg.layout.llm_chunks),
                             ("vision_encoder", cfg.vision_recompute, cfg.layout.vit_chunks)):
        if rc.granularity == "full" and rc.method == "uniform":
            # Megatron's uniform method groups num_layers consecutive layers of a chunk; a chunk whose
            # size is not a multiple still works (the last group is shorter), so nothing to reject.
            continue
        if rc.granularity == "full" and rc.method == "block":
            biggest = max(n for c in chunks for n in c)
            if rc.num_layers > biggest:
                cfg.notices.append(f"{name} recompute_num_layers {rc.num_layers} exceeds the largest pipeline "
                                   f"chunk ({biggest} layers): every layer is recomputed")


def check_backend_supports(cfg: ParallelConfig, backend: str):
    """Stop before any compute when the layout needs semi-auto parallel on a backend without it.

    MindSpore's semi-auto parallel (operator sharding, pipeline stages, parallel optimizer) only
    compiles for Ascend (and GPU builds): on CPU `set_auto_parallel_context(parallel_mode=
    "semi_auto_parallel")` fails with "Invalid backend: CPU". Data parallel runs everywhere.
    Returns the notices for features that are simply off on this backend."""
    b = (backend or "").upper()
    if b in ("ASCEND", "GPU"):
        return []
    if cfg.is_parallel():
        raise ParallelConfigError(
            f"tensor/pipeline/context parallel (tp {cfg.tp}, pp {cfg.pp}, cp {cfg.cp}) needs MindSpore's "
            f"semi-auto parallel, which only runs on Ascend: on {b or 'this'} backend MindSpore reports "
            f"'Invalid backend: CPU'. Run with --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 "
            f"--context-parallel-size 1 (data parallel under msrun works on CPU), or run on Ascend. "
            f"`python -m mindspeed_ms.parallel.plan` checks this layout statically.")
    notes = []
    if cfg.use_distributed_optimizer and cfg.dp > 1:
        notes.append("--use-distributed-optimizer: MindSpore's parallel optimizer needs semi-auto parallel "
                     "(Ascend); on CPU each data-parallel rank keeps full optimizer states (same update)")
    return notes
