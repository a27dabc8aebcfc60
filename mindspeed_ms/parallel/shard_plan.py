"""The shard plan: semi-auto-parallel strategies for every primitive, built as data from the layout.

The model Cells hold the math only; this module says how each primitive is split (torchtitan's
`parallelize_module` beside a pure model). A plan is a list of `ShardEntry(cell, prim, strategy)`
plus per-Cell pipeline/recompute settings; `apply_shard_plan(model, plan)` sets them on a model
(`prim.shard(...)`, `cell.pipeline_stage`, `cell.recompute()`), which MindSpore compiles only
under semi-auto parallel on Ascend. On CPU the same plan is built and checked statically
(`checker.py`).

Strategies follow MindSpore's convention: one tuple per primitive input, one split count per
dimension. Activations of the linears are 2-D `[rows, features]` where rows = batch x tokens, so
their row split is the data-parallel (x context-parallel, x tensor-parallel in sequence-parallel
regions) split. Roles:

- column-parallel (`linear_qkv`, `linear_fc1`, projector `linear_fc1`): weight rows split by tp,
  output features split by tp, no communication;
- row-parallel (`linear_proj`, `linear_fc2`, projector `linear_fc2`): contraction dim split by tp,
  partial sums all-reduced (reduce-scattered over rows with sequence parallel, via `out_strategy`);
- attention: the head dim split by tp (x cp under Ulysses, whose all-to-all MindSpore inserts at the
  layout change from a sequence-split to a head-split tensor);
- vocab-parallel embedding (`Gather` with the table split by rows) and output layer / cross-entropy
  with the vocabulary split by tp;
- LoRA adapters (`--lora-target-modules`, `peft/lora_layer.py`): the wrapped layer's primitives move
  under `<module>.base_layer`; the adapter follows its base weight's tensor-parallel split as the
  checkpoints do (`checkpoint/tp_split.py`): over a column-parallel linear A is whole and B's rows
  are split (the update comes out split over features like the base output), over a row-parallel
  linear A's columns are split (x A^T is a partial sum over tp, all-reduced at [rows, r] only) and
  B is whole.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from mindspeed_ms.config.param_shapes import PROJECTOR_PREFIX, TEXT_PREFIX, VISION_PREFIX
from mindspeed_ms.parallel.config import ParallelConfig

Strategy = Tuple[Tuple[int, ...], ...]
# FlashAttentionScore's compressed causal mask (sparse_mode 3), as models/layers/attention.py builds it
FLASH_CAUSAL_MASK_SIZE = 2048


@dataclass
class ShardEntry:
    cell: str                          # Cell path, MindSpeed-MM names (global layer numbers)
    prim: str                          # primitive attribute on that Cell
    strategy: Strategy                 # in_strategy
    shapes: Tuple[Tuple[int, ...], ...]  # global input shapes (for the static checker)
    role: str
    stage: int
    out_strategy: Optional[Strategy] = None
    # (input_a, dim_a, input_b, dim_b): dims contracted together must be split the same way
    contractions: Tuple[Tuple[int, int, int, int], ...] = ()
    # input index -> parameter name whose per-rank slice this input strategy implies
    params: Dict[int, str] = field(default_factory=dict)


@dataclass
class CellSetting:
    cell: str
    stage: int
    chunk: int = 0
    recompute: bool = False
    # plain attributes the plan sets on the Cell (e.g. glu_chunks, see below)
    attrs: Dict[str, object] = field(default_factory=dict)


@dataclass
class LoRASpec:
    """The LoRA flags the plan needs: which linears are wrapped, the rank, whether dropout runs."""
    targets: Tuple[str, ...]
    r: int
    dropout: float = 0.0


@dataclass
class ShardPlan:
    cfg: ParallelConfig
    model_cfg: object
    entries: List[ShardEntry] = field(default_factory=list)
    cells: List[CellSetting] = field(default_factory=list)
    flash_attention: bool = False
    notes: List[str] = field(default_factory=list)
    # tied embeddings with the output layer on another stage: the model needs its own copy
    tied_output_copy: bool = False
    lora: Optional[LoRASpec] = None
    lora_modules: List[str] = field(default_factory=list)   # module paths that carry an adapter

    def entries_for(self, cell_prefix: str) -> List[ShardEntry]:
        return [e for e in self.entries if e.cell == cell_prefix or e.cell.startswith(cell_prefix + ".")]

    def param_strategies(self) -> Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], int]]:
        """name -> (full shape, per-dim split, stage) for every parameter a strategy touches."""
        out = {}
        for e in self.entries:
            for idx, name in e.params.items():
                out[name] = (e.shapes[idx], e.strategy[idx], e.stage)
        return out


def _vision_tokens(cfg: ParallelConfig, vision_patches: Optional[int], merge: int) -> int:
    """Global ViT rows of one micro-batch. Without an explicit count, the most a sample can carry:
    every text position an image token, each worth merge^2 patches."""
    per_sample = vision_patches if vision_patches else (cfg.seq_length or 1) * merge ** 2
    return cfg.micro_batch_size * cfg.dp * per_sample


def build_shard_plan(model_cfg, cfg: ParallelConfig, backend: str = "CPU", bf16: bool = False,
                     vision_patches: Optional[int] = None, lora: Optional[LoRASpec] = None) -> ShardPlan:
    """All strategies and Cell settings for `model_cfg` (Qwen2VLConfig) under a validated `cfg`.

    `vision_patches`: patches per sample (defaults to the seq-length bound) for the shapes the
    checker verifies; the strategies do not depend on it. `lora`: the adapters `apply_lora` puts
    on the model (the same target matching)."""
    v, p, t = model_cfg.vision, model_cfg.projector, model_cfg.text
    tp, dp, cp = cfg.tp, cfg.dp, cfg.cp
    sp = cfg.sequence_parallel
    plan = ShardPlan(cfg=cfg, model_cfg=model_cfg, flash_attention=(backend.upper() == "ASCEND" and bf16),
                     lora=lora)
    layout = cfg.layout
    seq = cfg.padded_seq_length(cfg.seq_length or cfg.seq_split)
    batch = cfg.micro_batch_size * dp
    rows_t = batch * seq                       # text rows (global, one micro-batch)
    rows_v = _vision_tokens(cfg, vision_patches, v.spatial_merge_size)
    row_split_t = dp * cp                      # text rows outside SP regions
    sp_split_t = dp * cp * (tp if sp else 1)   # text rows inside SP regions (norms, residual)

    vit_stage = {}
    llm_stage = {}
    for pl in layout.placements:
        for i in pl.vit_layers:
            vit_stage[i] = (pl.stage, pl.chunk)
        for i in pl.llm_layers:
            llm_stage[i] = (pl.stage, pl.chunk)
    patch_pl = next(pl for pl in layout.placements if pl.patch_embed)
    proj_pl = next(pl for pl in layout.placements if pl.projector)
    emb_pl = next(pl for pl in layout.placements if pl.embedding)
    out_pl = next(pl for pl in layout.placements if pl.output_layer)

    add = plan.entries.append

    if lora is not None:
        from mindspeed_ms.peft.lora_model import target_matches

    def wrapped(module):
        return lora is not None and any(target_matches(x, module) for x in lora.targets)

    def column(cell, rows, rsplit, n_in, n_out, stage, bias, wname):
        base = f"{cell}.base_layer" if wrapped(wname) else cell
        add(ShardEntry(base, "matmul", ((rsplit, 1), (tp, 1)), ((rows, n_in), (n_out, n_in)), "column", stage,
                       contractions=((0, 1, 1, 1),), params={1: wname + ".weight"}))
        if bias:
            add(ShardEntry(base, "bias_add", ((rsplit, tp), (tp,)), ((rows, n_out), (n_out,)), "column-bias",
                           stage, params={1: wname + ".bias"}))
        if base != cell:
            adapter(cell, rows, rsplit, n_in, n_out, stage, wname, (rsplit, 1), (1, 1), (tp, 1), (rsplit, tp))

    def row(cell, rows, rsplit, n_in, n_out, stage, bias, wname, out_rsplit):
        base = f"{cell}.base_layer" if wrapped(wname) else cell
        out = ((out_rsplit, 1),) if out_rsplit != rsplit else None
        add(ShardEntry(base, "matmul", ((rsplit, tp), (1, tp)), ((rows, n_in), (n_out, n_in)), "row", stage,
                       out_strategy=out, contractions=((0, 1, 1, 1),), params={1: wname + ".weight"}))
        if bias:
            add(ShardEntry(base, "bias_add", ((out_rsplit, 1), (1,)), ((rows, n_out), (n_out,)), "row-bias",
                           stage, params={1: wname + ".bias"}))
        if base != cell:
            adapter(cell, rows, rsplit, n_in, n_out, stage, wname, (rsplit, tp), (1, tp), (1, 1), (out_rsplit, 1))

    def adapter(cell, rows, rsplit, n_in, n_out, stage, wname, x_split, a_split, b_split, y_split):
        """LoRALinear's primitives: x [rows, in] -> x A^T [rows, r] -> (x A^T) B^T [rows, out], scaled,
        added to the base output (which has `y_split`)."""
        r = lora.r
        plan.lora_modules.append(wname)
        delta = (rsplit, b_split[0])
        if lora.dropout > 0:
            add(ShardEntry(f"{cell}.dropout", "dropout", (x_split,), ((rows, n_in),), "lora", stage))
        add(ShardEntry(cell, "matmul_a", (x_split, a_split), ((rows, n_in), (r, n_in)), "lora", stage,
                       contractions=((0, 1, 1, 1),), params={1: f"{wname}.lora_A.default.weight"}))
        add(ShardEntry(cell, "matmul_b", ((rsplit, 1), b_split), ((rows, r), (n_out, r)), "lora", stage,
                       contractions=((0, 1, 1, 1),), params={1: f"{wname}.lora_B.default.weight"}))
        add(ShardEntry(cell, "mul_scale", (delta, ()), ((rows, n_out), ()), "lora", stage))
        add(ShardEntry(cell, "add_delta", (y_split, y_split), ((rows, n_out), (rows, n_out)), "lora", stage))

    def attention(cell, b, kv, rep, s, d, bsplit, hsplit, qsplit, mask_b, stage, vit):
        """CoreAttention: queries grouped by kv head, q [b, kv, rep*s, d], k/v [b, kv, s, d],
        scores viewed [b, kv, rep, s, s] for the mask and softmax. `hsplit` splits the kv-head axis;
        `qsplit` splits the grouped query rows (whole query heads when it divides rep, else query
        positions), k/v then being gathered over that split."""
        q_rows = (1, qsplit, 1) if rep % qsplit == 0 else (1, 1, qsplit)   # (.., rep, s, ..) view
        qk = ((bsplit, hsplit, qsplit, 1), (bsplit, hsplit, 1, 1))
        add(ShardEntry(cell, "bmm_qk", qk, ((b, kv, rep * s, d), (b, kv, s, d)), "heads", stage,
                       contractions=((0, 3, 1, 3),)))
        add(ShardEntry(cell, "mul_scale", ((bsplit, hsplit, qsplit, 1), ()), ((b, kv, rep * s, d), ()), "heads", stage))
        scores5 = (bsplit, hsplit) + q_rows[1:] + (1,)
        mb = bsplit if mask_b == b else 1
        add(ShardEntry(cell, "add_mask", (scores5, (mb, 1, 1, q_rows[2], 1)),
                       ((b, kv, rep, s, s), (mask_b, 1, 1, s, s)), "heads", stage))
        add(ShardEntry(cell, "softmax", (scores5,), ((b, kv, rep, s, s),), "heads", stage))
        add(ShardEntry(cell, "bmm_pv", ((bsplit, hsplit, qsplit, 1), (bsplit, hsplit, 1, 1)),
                       ((b, kv, rep * s, s), (b, kv, s, d)), "heads", stage, contractions=((0, 3, 1, 2),)))
        if plan.flash_attention and vit:
            # the ViT's varlen FlashAttentionScore, TND [patches, heads, d] with the blocks' cumulative
            # ends (actual_seq_qlen/kvlen, global over the step): heads split by tp, the patch axis
            # whole (the dp ranks' patches are gathered into the one sequence the ends describe)
            tnd = (1, hsplit, 1)
            add(ShardEntry(cell, "flash_attention_tnd", (tnd, tnd, tnd), ((s, kv, d),) * 3, "heads", stage))
        elif plan.flash_attention:
            # causal FlashAttentionScore, BNSD (q heads = kv * rep), sparse_mode 3 with the compressed
            # 2048x2048 mask (replicated); a second split is taken on the query positions, k/v gathered
            fq = (bsplit, hsplit, qsplit, 1)
            kvs = (bsplit, hsplit, 1, 1)
            n = FLASH_CAUSAL_MASK_SIZE
            add(ShardEntry(cell, "flash_attention", (fq, kvs, kvs, (1, 1)),
                           ((b, kv * rep, s, d), (b, kv, s, d), (b, kv, s, d), (n, n)), "heads", stage))

    def norm(cell, x_shape, x_split, stage, wname, layer_norm):
        """LayerNorm (`layer_norm`: x, gamma, beta) or RMSNorm (`mul_weight`: weight, x); the statistic
        is over the last axis, which stays whole."""
        width = x_shape[-1]
        if layer_norm:
            add(ShardEntry(cell, "layer_norm", (x_split, (1,), (1,)), (x_shape, (width,), (width,)), "norm",
                           stage, params={1: wname + ".weight", 2: wname + ".bias"}))
        else:
            add(ShardEntry(cell, "mul_weight", ((1,), x_split), ((width,), x_shape), "norm", stage,
                           params={0: wname + ".weight"}))

    # ---- vision encoder (rows = patches of the micro-batch; split by dp, replicated over cp)
    e, vf, vh = v.hidden_size, v.ffn_hidden_size, v.num_attention_heads
    vd = v.kv_channels
    # Qwen2.5-VL: RMSNorm ViT / merger norms, gated ViT MLP (fc1 = [gate; up], glu-split like the LLM's)
    vit_ln = v.normalization == "LayerNorm"
    vit_glu = getattr(v, "gated_linear_unit", False)
    stage = patch_pl.stage
    add(ShardEntry(f"{VISION_PREFIX}.patch_embed.proj", "matmul", ((dp, 1), (1, 1)),
                   ((rows_v, v.patch_dim), (e, v.patch_dim)), "replicated", stage,
                   contractions=((0, 1, 1, 1),)))
    plan.cells.append(CellSetting(f"{VISION_PREFIX}.patch_embed", stage, patch_pl.chunk))
    for i in range(v.num_layers):
        stage, chunk = vit_stage[i]
        c = f"{VISION_PREFIX}.blocks.layers.{i}"
        norm(f"{c}.input_layernorm", (rows_v, e), (dp, 1), stage, f"{c}.input_layernorm", vit_ln)
        column(f"{c}.self_attention.linear_qkv", rows_v, dp, e, 3 * vh * vd, stage, True,
               f"{c}.self_attention.linear_qkv")
        # the ViT attends within each image: one block per dp rank's patches, heads split by tp
        # q [1, heads, N, d] over all patches of the step; the segment mask keeps attention inside each
        # image, so the dp ranks' query rows are split by dp (keys gathered; see docs/parallel.md)
        attention(f"{c}.self_attention.core_attention", 1, vh, 1, rows_v, vd, 1, tp, dp, 1, stage, True)
        row(f"{c}.self_attention.linear_proj", rows_v, dp, vh * vd, e, stage, True,
            f"{c}.self_attention.linear_proj", dp)
        norm(f"{c}.pre_mlp_layernorm", (rows_v, e), (dp, 1), stage, f"{c}.pre_mlp_layernorm", vit_ln)
        column(f"{c}.mlp.linear_fc1", rows_v, dp, e, 2 * vf if vit_glu else vf, stage, True, f"{c}.mlp.linear_fc1")
        row(f"{c}.mlp.linear_fc2", rows_v, dp, vf, e, stage, True, f"{c}.mlp.linear_fc2", dp)
        rc = i in set(cfg.vision_recompute.recomputed_layers(_chunk_layers(layout, chunk, stage, "vit")))
        plan.cells.append(CellSetting(c, stage, chunk, recompute=rc))
        if vit_glu and tp > 1:  # rank-local SwiGLU over mm-convert's per-rank [gate_r; up_r] (as the LLM below)
            plan.cells.append(CellSetting(f"{c}.mlp", stage, chunk, attrs={"glu_chunks": tp}))

    # ---- projector (patch merger) on the stage of the last ViT layer
    stage = proj_pl.stage
    merged_rows = rows_v // v.spatial_merge_size ** 2
    norm(f"{PROJECTOR_PREFIX}.layernorm", (rows_v, p.input_size), (dp, 1), stage, f"{PROJECTOR_PREFIX}.layernorm",
         p.normalization == "LayerNorm")
    m = p.input_size * v.spatial_merge_size ** 2
    column(f"{PROJECTOR_PREFIX}.encoder.linear_fc1", merged_rows, dp, m, p.ffn_hidden_size, stage, True,
           f"{PROJECTOR_PREFIX}.encoder.linear_fc1")
    row(f"{PROJECTOR_PREFIX}.encoder.linear_fc2", merged_rows, dp, p.ffn_hidden_size, p.hidden_size, stage, True,
        f"{PROJECTOR_PREFIX}.encoder.linear_fc2", dp)
    plan.cells.append(CellSetting(PROJECTOR_PREFIX, stage, proj_pl.chunk))

    # ---- text decoder
    h, hd, heads, groups = t.hidden_size, t.kv_channels, t.num_attention_heads, t.num_query_groups
    qkv_out = (heads + 2 * groups) * hd
    x3_split = (dp, cp * (tp if sp else 1), 1)
    # Ulysses: with kv heads divisible by tp x cp, attention is split by kv heads over tp x cp (the
    # sequence-split activations reach it through an all-to-all). Otherwise heads over tp and the
    # grouped query rows over cp (whole query heads when cp divides heads/kv), k/v gathered over cp.
    if groups % (tp * cp) == 0:
        kv_split, q_split = tp * cp, 1
    else:
        kv_split, q_split = tp, cp
    stage = emb_pl.stage
    add(ShardEntry(f"{TEXT_PREFIX}.embedding.word_embeddings", "gather", ((tp, 1), (dp, cp)),
                   ((t.vocab_size, h), (batch, seq)), "vocab", stage,
                   params={0: f"{TEXT_PREFIX}.embedding.word_embeddings.weight"}))
    plan.cells.append(CellSetting(f"{TEXT_PREFIX}.embedding", stage, emb_pl.chunk))
    for i in range(t.num_layers):
        stage, chunk = llm_stage[i]
        c = f"{TEXT_PREFIX}.decoder.layers.{i}"
        norm(f"{c}.input_layernorm", (batch, seq, h), x3_split, stage, f"{c}.input_layernorm", False)
        column(f"{c}.self_attention.linear_qkv", rows_t, row_split_t, h, qkv_out, stage, t.add_qkv_bias,
               f"{c}.self_attention.linear_qkv")
        # Ulysses: sequence-split activations become head-split (tp x cp) for attention; kv heads
        # are repeated to the query heads before the batch-matmuls (GQA), so the head axis is `heads`
        attention(f"{c}.self_attention.core_attention", batch, groups, heads // groups, seq, hd, dp,
                  kv_split, q_split, batch, stage, False)
        row(f"{c}.self_attention.linear_proj", rows_t, row_split_t, heads * hd, h, stage, False,
            f"{c}.self_attention.linear_proj", sp_split_t)
        norm(f"{c}.pre_mlp_layernorm", (batch, seq, h), x3_split, stage, f"{c}.pre_mlp_layernorm", False)
        column(f"{c}.mlp.linear_fc1", rows_t, row_split_t, h, 2 * t.ffn_hidden_size, stage, False,
               f"{c}.mlp.linear_fc1")
        row(f"{c}.mlp.linear_fc2", rows_t, row_split_t, t.ffn_hidden_size, h, stage, False,
            f"{c}.mlp.linear_fc2", sp_split_t)
        rc = i in set(cfg.text_recompute.recomputed_layers(_chunk_layers(layout, chunk, stage, "llm")))
        plan.cells.append(CellSetting(c, stage, chunk, recompute=rc))
        if tp > 1:
            # linear_fc1 holds [gate; up]; mm-convert gives rank r concat(gate[r], up[r]). Keeping
            # the parameter in that per-rank order (rank_params.to_plan_layout) makes each rank's
            # contiguous slice its mm-convert file, and the MLP splits gate/up inside each of the
            # tp chunks of its output, so SwiGLU stays rank-local.
            plan.cells.append(CellSetting(f"{c}.mlp", stage, chunk, attrs={"glu_chunks": tp}))
    stage = out_pl.stage
    norm(f"{TEXT_PREFIX}.decoder.final_layernorm", (batch, seq, h), x3_split, stage,
         f"{TEXT_PREFIX}.decoder.final_layernorm", False)
    plan.cells.append(CellSetting(f"{TEXT_PREFIX}.decoder.final_layernorm", stage, out_pl.chunk))
    # tied embeddings share the table when embedding and output sit on one stage; across stages
    # mm-convert gives the last stage its own copy named output_layer.weight
    shared = t.tied and out_pl.stage == emb_pl.stage
    out_w = f"{TEXT_PREFIX}.embedding.word_embeddings.weight" if shared else f"{TEXT_PREFIX}.output_layer.weight"
    out_cell, out_prim = ((TEXT_PREFIX, "output_matmul") if shared else (f"{TEXT_PREFIX}.output_layer", "matmul"))
    add(ShardEntry(out_cell, out_prim, ((row_split_t, 1), (tp, 1)),
                   ((rows_t, h), (t.vocab_size, h)), "vocab", stage, contractions=((0, 1, 1, 1),),
                   params={1: out_w}))
    if not shared:
        # tied embeddings across stages: the last stage holds its own output_layer with mm-convert's
        # copy of the table (apply_shard_plan asks the model to create it)
        plan.tied_output_copy = t.tied
        plan.cells.append(CellSetting(f"{TEXT_PREFIX}.output_layer", stage, out_pl.chunk))
    if tp > 1:
        # vocab-parallel cross-entropy (models/qwen2vl/vocab_parallel_ce.py): the logits stay split
        # over the vocabulary as the output layer leaves them; the max, the sum-exp and the picked
        # target logit are reductions over the split axis (MindSpore all-reduces them over tp)
        ce = "loss_fn.vocab_ce"
        vshape, vs = (rows_t, t.vocab_size), (row_split_t, tp)
        add(ShardEntry(ce, "reduce_max", (vs,), (vshape,), "loss", stage))
        add(ShardEntry(ce, "sub", (vs, (row_split_t, 1)), (vshape, (rows_t, 1)), "loss", stage))
        add(ShardEntry(ce, "exp", (vs,), (vshape,), "loss", stage))
        add(ShardEntry(ce, "sum_exp", (vs,), (vshape,), "loss", stage))
        # OneHot's strategy describes its output [rows, vocab] (inputs: indices [rows], two scalars)
        add(ShardEntry(ce, "onehot", (vs, (), ()), (vshape, (), ()), "loss", stage))
        add(ShardEntry(ce, "mul_pick", (vs, vs), (vshape, vshape), "loss", stage))
        add(ShardEntry(ce, "sum_pick", (vs,), (vshape,), "loss", stage))
        plan.cells.append(CellSetting("loss_fn", stage, out_pl.chunk, attrs={"vocab_parallel": True}))
    else:
        # whole vocabulary per rank: LogSoftmax / GatherD over [b, s, vocab]
        add(ShardEntry("loss_fn", "log_softmax", ((dp, cp, 1),), ((batch, seq, t.vocab_size),), "loss", stage))
        plan.cells.append(CellSetting("loss_fn", stage, out_pl.chunk))
    if cp > 1 and cfg.seq_length and cfg.seq_length % cfg.seq_split:
        plan.notes.append(f"unaligned sequence: --seq-length {cfg.seq_length} padded to {seq} "
                          f"(multiple of {cfg.seq_split}) for the sequence split; padding is masked")
    return plan


def _chunk_layers(layout, chunk, stage, kind) -> range:
    pl = next(x for x in layout.placements if x.chunk == chunk and x.stage == stage)
    return pl.llm_layers if kind == "llm" else pl.vit_layers


def stage_config(plan: ShardPlan) -> Tuple[Dict[str, int], Dict[str, int]]:
    """{cell: pipeline_stage}, {cell: pipeline_segment} for `mindspore.parallel.nn.Pipeline`."""
    stages = {c.cell: c.stage for c in plan.cells}
    segments = {c.cell: c.chunk for c in plan.cells} if plan.cfg.vpp > 1 else {}
    return stages, segments


def apply_shard_plan(model, plan: ShardPlan):
    """Set the plan on a model: `prim.shard(...)` for every entry, `pipeline_stage` /
    `pipeline_segment` and `recompute()` per Cell, and the plan's Cell attributes. Only
    meaningful under semi-auto parallel (Ascend); setting it elsewhere changes nothing in the math.
    Raises ParallelConfigError listing every Cell / primitive / attribute the model lacks.

    With `plan.tied_output_copy` the text decoder first gets its output-layer copy of the table
    (`add_output_layer_copy`), a new parameter: apply the plan before building the optimizer."""
    from mindspeed_ms.parallel.layout import ParallelConfigError
    cells = dict(model.cells_and_names())
    decoder = cells.get(TEXT_PREFIX)
    if plan.tied_output_copy and hasattr(decoder, "add_output_layer_copy"):
        decoder.add_output_layer_copy()
        cells = dict(model.cells_and_names())
    missing = []
    for e in plan.entries:
        cell = cells.get(e.cell)
        prim = getattr(cell, e.prim, None) if cell is not None else None
        if prim is None or not hasattr(prim, "shard"):
            if e.prim.startswith("flash_attention") and cell is not None and getattr(cell, "backend", None) != "flash":
                missing.append(f"{e.cell}: the plan uses flash attention but the model was built with the "
                               f"'{getattr(cell, 'backend', '?')}' attention backend")
            else:
                missing.append(f"{e.cell}.{e.prim}" + (" (no such Cell)" if cell is None else " (no such primitive)"))
            continue
        if e.out_strategy is not None:
            prim.shard(in_strategy=e.strategy, out_strategy=e.out_strategy)
        else:
            prim.shard(e.strategy)
    for cell in cells.values():
        if hasattr(cell, "tile_broadcasts"):
            cell.tile_broadcasts = False        # the sharded primitives, not the CPU variants, must run
    for c in plan.cells:
        cell = cells.get(c.cell)
        if cell is None:
            missing.append(f"{c.cell} (no such Cell)")
            continue
        if plan.cfg.pp > 1:
            cell.pipeline_stage = c.stage
        if plan.cfg.vpp > 1:
            cell.pipeline_segment = c.chunk
        if c.recompute:
            cell.recompute()
        for key, value in c.attrs.items():
            if not hasattr(cell, key):
                missing.append(f"{c.cell}: {type(cell).__name__} has no attribute '{key}' for the plan to set")
                continue
            setattr(cell, key, value)
    if missing:
        raise ParallelConfigError("the model does not have what the shard plan sets:\n  " + "\n  ".join(missing))
