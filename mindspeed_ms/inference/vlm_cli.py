"""inference_vlm.py and evaluate_vlm.py: MindSpeed-MM's command lines for a trained Qwen2-VL.

    python inference_vlm.py <Megatron flags> --load MM_CKPT --mm-model inference_qwen2vl_7b.json
    python evaluate_vlm.py  <Megatron flags> --load MM_CKPT --mm-model evaluate_qwen2vl_7b.json

The flags are the training parser's (one list, unknown flags are errors). Used here: `--load`
(a MindSpeed-MM checkpoint directory, latest iteration), `--mm-model`, `--seed` (sampler),
`--micro-batch-size` (prompts generated together; MindSpeed-MM answers one at a time, the answers
are the same), the parallel sizes (TP/PP/CP > 1 stop with the reason). Training-only flags are
accepted and listed once as having no effect; `--vocab-size` etc. are checked against the JSON.
"""
import os
import sys

from mindspeed_ms.arguments import ArgumentError, check_against_model_json, explicitly_set, no_effect_flags, \
    parse_args

# flags that mean something to generation; every other explicitly given flag is listed as "no effect"
_USED_HERE = {"tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
              "micro_batch_size", "seed", "load", "mm_model", "ai_framework", "bf16", "distributed_backend",
              "vocab_size", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
              "num_query_groups", "normalization", "swiglu", "group_query_attention",
              "untie_embeddings_and_output_weights", "max_position_embeddings", "make_vocab_size_divisible_by",
              "no_load_optim", "no_load_rng"}


def _parallel_refusal(args, backend):
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    if tp * pp * cp == 1:
        return None
    sizes = f"tp {tp}, pp {pp}, cp {cp}"
    if backend != "Ascend":
        return (f"tensor/pipeline/context parallel generation ({sizes}) needs MindSpore's semi-auto parallel, which "
                f"only runs on Ascend: on CPU MindSpore reports 'Invalid backend: CPU' (as in training). Set TP=1 "
                f"PP=1 in the script (CP=1) to generate on one CPU device in fp32.")
    return (f"tensor/pipeline/context parallel generation ({sizes}) is not available: the shard plan of this "
            f"framework covers training only, generation (KV cache, PYNATIVE) runs on one device. Set TP=1 PP=1 "
            f"(CP=1) in the script.")


def startup(argv, prog, task):
    """(args, PipelineConfig, backend, notices) after every check that needs no compute."""
    from mindspeed_ms.inference.mm_pipeline_config import read_pipeline_json
    from mindspeed_ms.training.backend import detect_backend, dist_env

    args = parse_args(argv, prog)
    backend = detect_backend()
    _, world = dist_env()
    if world > 1:
        raise ArgumentError(f"{prog}: error: started as {world} processes; generation runs in one process here: run it "
                            f"with python, as examples/mindspore/qwen2vl/*.sh do (no msrun/torchrun)")
    refusal = _parallel_refusal(args, backend)
    if refusal:
        raise ArgumentError(f"{prog}: error: {refusal}")
    if not args.mm_model:
        raise ArgumentError(f"{prog}: error: --mm-model is required: MindSpeed-MM's {task} JSON "
                            f"({'inference_qwen2vl_7b.json' if task == 'inference' else 'evaluate_qwen2vl_7b.json'})")
    if not args.load:
        raise ArgumentError(f"{prog}: error: --load is required: the MindSpeed-MM checkpoint directory to answer with")
    if args.micro_batch_size < 1:
        raise ArgumentError(f"{prog}: error: --micro-batch-size must be >= 1 (prompts generated together)")
    cfg = read_pipeline_json(args.mm_model, task, args.pipeline_model_parallel_size, backend)
    notices = list(cfg.notices)
    given_vocab = args.vocab_size
    if given_vocab is not None and given_vocab != cfg.model.text.vocab_size:
        # evaluate_qwen2vl_7b.sh passes --vocab-size twice (152064, then 1); MindSpeed-MM's model
        # takes the vocabulary from the JSON, so this is only worth a notice
        notices.append(f"--vocab-size {given_vocab}: the vocabulary is the JSON's text_decoder.vocab_size "
                       f"({cfg.model.text.vocab_size})")
        args.vocab_size = None
    notices += check_against_model_json(args, cfg.model, args.mm_model)
    for k, v in cfg.decoder_parallel.items():
        flag = getattr(args, k)
        if v != flag:
            notices.append(f"text_decoder.{k} = {v}: the command line's --{k.replace('_', '-')} {flag} is used")
    notices += [f"{f}: no effect on {backend}" if "(" not in f else f for f in no_effect_flags(args, backend)]
    seen = set(n.split(":")[0] for n in notices)
    for name in explicitly_set(args):
        flag = "--" + name.replace("_", "-")
        if name not in _USED_HERE and flag not in seen:
            notices.append(f"{flag}: a training flag, no effect on {task}")
    return args, cfg, backend, notices


def _build(args, cfg, backend):
    from mindspeed_ms.inference.mm_pipeline import Qwen2VlPipeline, load_mm_model
    from mindspeed_ms.inference.runtime import setup_inference_context

    setup_inference_context("Ascend" if backend == "Ascend" else "CPU")
    model, tag = load_mm_model(args.load, cfg.model)
    return Qwen2VlPipeline(cfg, model, seed=args.seed), tag


def _run(prog, task, argv, body):
    try:
        args, cfg, backend, notices = startup(argv, prog, task)
        for n in notices:
            print(f"notice: {n}", flush=True)
        pipe, tag = _build(args, cfg, backend)
        print(f"loaded {args.load} (iteration {tag}) on {backend}", flush=True)
        return body(args, cfg, pipe)
    except (ArgumentError, ValueError, OSError) as e:
        msg = str(e)
        print(msg if msg.startswith(prog) else f"{prog}: error: {msg}", file=sys.stderr)
        return 1


def main_inference(argv=None, prog="inference_vlm.py"):
    def body(args, cfg, pipe):
        msg = ([{"type": "image", "value": cfg.image_path}] if cfg.image_path else []) + \
              [{"type": "text", "value": cfg.prompts}]
        print(pipe.answer([pipe.encode(msg)])[0], flush=True)
        return 0
    return _run(prog, "inference", sys.argv[1:] if argv is None else argv, body)


def main_evaluate(argv=None, prog="evaluate_vlm.py"):
    from mindspeed_ms.inference.benchmarks.run import run_evaluation, xlsx_available

    def body(args, cfg, pipe):
        if not xlsx_available():
            print("notice: openpyxl is not installed: the result tables MindSpeed-MM writes as .xlsx are written as "
                  ".tsv with the same names and columns (pip install openpyxl for .xlsx)", flush=True)
        summary, written = run_evaluation(pipe, cfg, batch_size=args.micro_batch_size,
                                          progress=os.environ.get("MINDSPEED_MS_NO_PROGRESS") != "1")
        for k, v in summary.items():
            print(f"{cfg.evaluation_dataset} {k}: {v}")
        for p in written:
            print(f"wrote {p}")
        return 0
    return _run(prog, "evaluation", sys.argv[1:] if argv is None else argv, body)
