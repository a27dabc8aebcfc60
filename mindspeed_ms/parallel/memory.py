"""Per-device memory estimate of a training layout: parameters, gradients, optimizer states and
activations, per pipeline stage (the busiest stage is what must fit).

Model of the bytes (documented in docs/parallel.md):
- bf16 runs (Ascend): weights bf16 (2 B), gradients accumulated in fp32 (4 B, as Megatron does
  for bf16), optimizer = fp32 master copy + Adam m and v (12 B), divided by dp with
  --use-distributed-optimizer (MindSpore's parallel optimizer shards them over the dp group);
- fp32 runs (CPU): weights 4 B, gradients 4 B in the accumulators plus 4 B for the backward pass's
  own gradient outputs, which MicroStep holds until it adds them into the accumulators
  (training/train_step.py), Adam m and v 8 B (no master copy);
- frozen parameters (vision encoder / projector with `freeze`; with LoRA everything but the
  adapters) only hold their weights;
- activations saved for backward, per layer and micro-batch, from the layer's ops (see
  `_text_layer_acts`); full recompute keeps only each layer's input (plus one layer's activations
  while it is recomputed); selective recompute drops the attention scores; a frozen ViT saves
  nothing. In-flight micro-batches follow 1F1B (stage p holds pp - p) or Megatron's interleaved
  warm-up count with VPP;
- the output layer + loss (`_loss_bytes`). tp 1 runs the fused chunked loss
  (models/layers/linear_cross_entropy.py, 4 token chunks), which computes the output weight's fp32
  gradient [V, H] in the forward pass and holds it until backward, and per chunk three fp32
  [tokens/4 x V] buffers (logits, softmax, softmax - onehot), reused for the next chunk. (Before
  the loss used the fused Softmax kernel and the attention avoided broadcasting kernels, which keep
  private buffers on CPU, the CPU peak held every chunk's buffers; tiny model, seq 256: measured
  1903 -> 348 MB, tests/test_parallel_memory_measured.py.) The CPU trainer also runs the loss on
  the labelled rows only (`training.loss_weights.loss_rows`), which this estimate does not assume.
  tp > 1 keeps the vocab-parallel plain loss: logits in the compute dtype plus fp32
  log-probabilities, both vocab-split.

DPO (`dpo=True`, posttrain_qwen2vl_dpo.py's sharded step, rl/sharded_dpo.py): a micro-batch of
mbs pairs runs 2 x mbs rows (chosen + rejected) through the policy, and the per-row log-probs use
the plain (vocab-parallel with tp > 1) loss at any tp: logits plus fp32 log-probabilities. The
reference runs forward-only before the step (nothing saved for backward; its transient is below the
step's peak); its weights are the policy's own with LoRA and the base model as reference (adapters
gated off), or a second frozen copy (`dpo_reference_copy`: + the weights of one stage again).

Not modelled: graph compilation (about 0.5 GB of host memory for the tiny model on CPU), the
framework itself, communication buffers and allocator fragmentation.
"""
from dataclasses import dataclass
from typing import List, Optional

from mindspeed_ms.config.param_shapes import PROJECTOR_PREFIX, VISION_PREFIX
from mindspeed_ms.parallel.rank_params import rank_param_shapes
from mindspeed_ms.parallel.shard_plan import ShardPlan
from mindspeed_ms.peft.lora_merge import is_lora_name

GiB = 1024 ** 3


@dataclass
class StageMemory:
    stage: int
    params: int                # parameter count on one device of this stage
    trainable: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    in_flight: int             # micro-batches (chunk-micro-batches with VPP) whose activations are held

    @property
    def total_bytes(self):
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes + self.activation_bytes


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _frozen(name, model_cfg, lora):
    if lora is not None:
        return not is_lora_name(name)
    if name.startswith(VISION_PREFIX):
        return model_cfg.vision.freeze
    if name.startswith(PROJECTOR_PREFIX):
        return model_cfg.projector.freeze
    return False


def _text_layer_acts(t, cfg, b, s, flash, selective):
    """Elements saved for backward by one decoder layer on one device, one micro-batch."""
    tp, cp = cfg.tp, cfg.cp
    tok = b * s // cp                                   # tokens of this device outside attention
    sp = tp if cfg.sequence_parallel else 1
    h, hd, I = t.hidden_size, t.kv_channels, t.ffn_hidden_size
    q = t.num_attention_heads * hd // tp
    kv = t.num_query_groups * hd // tp
    heads = t.num_attention_heads // (tp * cp)
    # norm inputs and the (gathered) inputs of qkv / fc1: 2 in SP regions + 2 at full width
    elems = tok * (2 * h // sp + 2 * h)
    elems += tok * (q + 2 * kv)                         # q, k, v after rotary
    elems += tok * q                                    # attention output = linear_proj input
    elems += tok * (2 * I // tp + I // tp + I // tp)    # gate and up, silu(gate), fc2 input
    if not flash and not selective:
        elems += b * heads * s * s                      # softmax probabilities
    if flash:
        elems += b * heads * s                          # log-sum-exp (fp32, counted as one element)
    return elems


def _vit_layer_acts(v, cfg, n, flash):
    """Elements saved by one ViT layer on one device for `n` patches of its micro-batch."""
    tp = cfg.tp
    e, f = v.hidden_size, v.ffn_hidden_size
    elems = n * (2 * e + 2 * e)                          # norm inputs, qkv / fc1 inputs
    elems += n * (3 * e // tp + e // tp)                 # q, k, v and proj input
    elems += n * (2 * f // tp)                           # fc1 output (gelu) and fc2 input
    if not flash:
        elems += (v.num_attention_heads // tp) * n * n  # block-diagonal scores over the micro-batch
    return elems


# fp32 [tokens/4 x V] buffers of the fused chunked loss held at the peak (see the module docstring)
CHUNKED_LOSS_BUFFERS = 3            # one chunk's logits, softmax and softmax - onehot
LOSS_CHUNKS = 4                     # Qwen2VLForConditionalGeneration.linear_cross_entropy


def _loss_bytes(t, cfg, b, s, act_b, plain=False):
    """Bytes of the output layer + loss on the last stage for one micro-batch (`plain`: the DPO
    log-probs, which never use the fused chunked loss)."""
    tok = b * s // cfg.cp
    vocab = t.vocab_size // cfg.tp
    if cfg.tp > 1 or plain:
        # vocab-parallel plain loss: logits in the compute dtype plus fp32 log-probabilities
        return tok * vocab * (act_b + 4)
    grad_w = t.vocab_size * t.hidden_size * 4
    return grad_w + CHUNKED_LOSS_BUFFERS * (tok // LOSS_CHUNKS) * vocab * 4


def _in_flight(cfg, stage):
    m = cfg.pipeline_micro_batches       # padded empty micro-batches hold activations too
    if cfg.pp == 1:
        return 1
    if cfg.vpp == 1:
        return min(m, cfg.pp - stage)
    # Megatron's interleaved schedule: warm-up chunk-micro-batches plus the one in steady state
    return min(m * cfg.vpp, (cfg.pp - stage - 1) * 2 + (cfg.vpp - 1) * cfg.pp + 1)


def estimate_memory(plan: ShardPlan, dtype: str = "bf16", vision_patches: Optional[int] = None,
                    seq_length: Optional[int] = None, dpo: bool = False,
                    dpo_reference_copy: bool = False) -> List[StageMemory]:
    """Per-stage memory of one device. `dtype` "bf16" (Ascend) or "fp32" (CPU); `seq_length` and
    `vision_patches` (patches per sample; default: none) describe one micro-batch's sample.
    `dpo`: a DPO step (2 rows per pair, plain log-probs); `dpo_reference_copy`: its reference is a
    second frozen copy of the weights (without LoRA; see the module docstring)."""
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"estimate_memory: dtype must be 'bf16' or 'fp32', got {dtype!r}")
    cfg, mc = plan.cfg, plan.model_cfg
    act_b = 2 if dtype == "bf16" else 4
    # fp32 (CPU): accumulators + the backward's own gradient outputs (see the module docstring)
    w_b, g_b, o_b = (2, 4, 12) if dtype == "bf16" else (4, 8, 8)
    opt_div = cfg.dp if cfg.use_distributed_optimizer else 1
    s = cfg.padded_seq_length(seq_length or cfg.seq_length or 1)
    b = cfg.micro_batch_size * (2 if dpo else 1)
    n_patches = b * (vision_patches or 0)
    flash = plan.flash_attention
    t_rc, v_rc = cfg.text_recompute, cfg.vision_recompute
    t, v = mc.text, mc.vision
    out = []
    for stage in range(cfg.pp):
        params = trainable = 0
        for chunk in rank_param_shapes(plan, stage).values():
            for name, shape in chunk.items():
                n = _numel(shape)
                params += n
                if not _frozen(name, mc, plan.lora):
                    trainable += n
        acts_chunks = []
        for pl in cfg.layout.stage_placements(stage):
            elems = 0
            full_layer = 0
            rc_llm = set(t_rc.recomputed_layers(pl.llm_layers))
            for i in pl.llm_layers:
                layer = _text_layer_acts(t, cfg, b, s, flash, t_rc.granularity == "selective")
                full_layer = max(full_layer, _text_layer_acts(t, cfg, b, s, flash, False))
                h_in = b * s // cfg.cp * t.hidden_size // (cfg.tp if cfg.sequence_parallel else 1)
                elems += h_in if i in rc_llm else layer
            if len(pl.vit_layers) and not v.freeze and n_patches:
                rc_vit = set(v_rc.recomputed_layers(pl.vit_layers))
                for i in pl.vit_layers:
                    layer = _vit_layer_acts(v, cfg, n_patches, flash)
                    full_layer = max(full_layer, layer)
                    elems += n_patches * v.hidden_size if i in rc_vit else layer
            loss = _loss_bytes(t, cfg, b, s, act_b, plain=dpo) if pl.output_layer else 0
            acts_chunks.append((elems + loss / act_b, full_layer))
        held = _in_flight(cfg, stage)
        per_chunk = sum(e for e, _ in acts_chunks) / max(1, cfg.vpp) if cfg.vpp > 1 else sum(e for e, _ in acts_chunks)
        transient = max((f for _, f in acts_chunks), default=0) if (t_rc.granularity == "full" or
                                                                    v_rc.granularity == "full") else 0
        act = int((per_chunk * held + transient) * act_b)
        ref_copy = params * w_b if (dpo and dpo_reference_copy) else 0
        out.append(StageMemory(stage=stage, params=params, trainable=trainable, weight_bytes=params * w_b + ref_copy,
                               grad_bytes=trainable * g_b, optimizer_bytes=trainable * o_b // opt_div,
                               activation_bytes=act, in_flight=held))
    return out
