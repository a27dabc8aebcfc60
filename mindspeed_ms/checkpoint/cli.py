"""`mm-convert`: the MindSpeed-MM checkpoint converter command line, one converter per model
family (Qwen2VLConverter, Qwen2_5_VLConverter; models/registry.py), with the same actions:

    mm-convert Qwen2VLConverter hf_to_mm --cfg.mm_dir DIR --cfg.hf_config.hf_dir DIR \
        --cfg.parallel_config.llm_pp_layers [[1,10,10,7]] --cfg.parallel_config.vit_pp_layers [[32,0,0,0]] \
        --cfg.parallel_config.tp_size 1
    mm-convert Qwen2VLConverter mm_to_hf --cfg.save_hf_dir DIR --cfg.mm_dir DIR --cfg.hf_config.hf_dir DIR \
        --cfg.parallel_config.llm_pp_layers [1,10,10,7] --cfg.parallel_config.vit_pp_layers [32,0,0,0] \
        --cfg.parallel_config.tp_size 1
    mm-convert Qwen2VLConverter resplit --cfg.source_dir DIR --cfg.target_dir DIR \
        --cfg.source_parallel_config.llm_pp_layers [1,10,10,7] ... --cfg.target_parallel_config.tp_size 1
"""
import sys
from typing import List, Literal, Optional, Union

from jsonargparse import ArgumentParser

from .converter import hf_to_mm, mm_to_hf, resplit

_LAYERS = Union[List[List[int]], List[int]]

_LLM_HELP = ("LLM decoder layers per pipeline stage, e.g. [1,10,10,7]; must match pipeline_num_layers of "
             "text_decoder in model.json and sum to num_hidden_layers. {form}")
_VIT_HELP = ("ViT layers per pipeline stage, e.g. [32,0,0,0]; must match pipeline_num_layers of "
             "vision_encoder in model.json and sum to vision_config.depth; all ViT layers must come "
             "before the first LLM layer. {form}")
_TP_HELP = ("tensor-parallel size; must divide num_key_value_heads (and the head, ffn and vocab sizes) "
            "and match --tensor-model-parallel-size of the training script")
_NESTED = ("Nested: one inner list per virtual-pipeline chunk, e.g. [[0,0,0,1],[4,4,4,4],[4,3,2,2]] "
           "(chunk v of stage p = state dict model{v} of stage p).")
_FLAT = "Flat (one number per stage); a nested list selects a virtual-pipeline checkpoint."
_FMT_HELP = ("rank file format: 'pt' (torch.save model_optim_rng.pt, as MindSpeed-MM writes) or "
             "'safetensors' (model_optim_rng.safetensors, readable by mindspore.load_checkpoint)")


def _parallel(p, prefix, form, required=True):
    p.add_argument(f"--cfg.{prefix}.llm_pp_layers", type=_LAYERS, required=required,
                   help=_LLM_HELP.format(form=form))
    p.add_argument(f"--cfg.{prefix}.vit_pp_layers", type=_LAYERS, required=required,
                   help=_VIT_HELP.format(form=form))
    p.add_argument(f"--cfg.{prefix}.tp_size", type=int, default=1, help=_TP_HELP)


def _add_converter(models, name, display):
    # jsonargparse adds subcommand levels top down: the converter first, then its actions
    conv = ArgumentParser(description=f"{display} converter")
    models.add_subcommand(name, conv, help=display)
    actions = conv.add_subcommands(dest="action", required=True)

    h = ArgumentParser(description="Hugging Face safetensors -> MindSpeed-MM checkpoint (tag 'release').")
    h.add_argument("--cfg.mm_dir", type=str, required=True,
                   help="output directory (gets latest_checkpointed_iteration.txt and release/)")
    h.add_argument("--cfg.hf_config.hf_dir", type=str, required=True,
                   help="Hugging Face model directory (config.json + model.safetensors or shards + index)")
    _parallel(h, "parallel_config", _NESTED)
    h.add_argument("--cfg.ckpt_format", type=Literal["pt", "safetensors"], default="pt", help=_FMT_HELP)
    h.add_argument("--cfg.progress", type=bool, default=True, help="show progress bars")
    actions.add_subcommand("hf_to_mm", h, help="Hugging Face -> MindSpeed-MM")

    m = ArgumentParser(description="MindSpeed-MM checkpoint -> Hugging Face directory (shards follow the "
                                   "source model.safetensors.index.json; config/tokenizer/processor copied).")
    m.add_argument("--cfg.save_hf_dir", type=str, required=True, help="output Hugging Face directory")
    m.add_argument("--cfg.mm_dir", type=str, required=True,
                   help="MindSpeed-MM checkpoint directory (the latest tag is converted)")
    m.add_argument("--cfg.hf_config.hf_dir", type=str, required=True,
                   help="the original Hugging Face directory: config, shard plan and tokenizer files come from it")
    _parallel(m, "parallel_config", _FLAT, required=False)
    m.add_argument("--cfg.progress", type=bool, default=True, help="show progress bars")
    actions.add_subcommand("mm_to_hf", m, help="MindSpeed-MM -> Hugging Face")

    r = ArgumentParser(description="MindSpeed-MM checkpoint -> MindSpeed-MM checkpoint with another layout.")
    r.add_argument("--cfg.source_dir", type=str, required=True, help="MindSpeed-MM checkpoint to re-split")
    r.add_argument("--cfg.target_dir", type=str, required=True, help="output directory (must differ)")
    _parallel(r, "source_parallel_config", "Layout of source_dir (checked against its files). " + _FLAT,
              required=False)
    _parallel(r, "target_parallel_config", "Layout to write. " + _FLAT)
    r.add_argument("--cfg.hf_config.hf_dir", type=Optional[str], default=None,
                   help="optional Hugging Face directory whose config.json enables the kv-head checks")
    r.add_argument("--cfg.ckpt_format", type=Optional[Literal["pt", "safetensors"]], default=None,
                   help=_FMT_HELP + "; default: the source's format")
    r.add_argument("--cfg.progress", type=bool, default=True, help="show progress bars")
    actions.add_subcommand("resplit", r, help="re-split TP/PP/VPP of a MindSpeed-MM checkpoint")


def build_parser() -> ArgumentParser:
    from mindspeed_ms.models.registry import FAMILIES
    root = ArgumentParser(prog="mm-convert", description=(
        "Convert Qwen2-VL / Qwen2.5-VL checkpoints between Hugging Face format and MindSpeed-MM's layout "
        "(release/mp_rank_XX[_YYY]/model_optim_rng.pt), and re-split MindSpeed-MM checkpoints to "
        "another tensor/pipeline layout. Works without torch; streams tensor by tensor."))
    models = root.add_subcommands(dest="model", required=True)
    for fam in FAMILIES:  # one converter per model family (models/registry.py)
        _add_converter(models, fam.converter, fam.display)
    return root


def run(argv=None):
    from mindspeed_ms.models.registry import family_for_converter
    args = build_parser().parse_args(argv)
    model_type = family_for_converter(args.model).hf_model_type
    conv = args[args.model]
    action = conv.action
    c = conv[action].cfg
    if action == "hf_to_mm":
        pc = c.parallel_config
        return hf_to_mm(c.hf_config.hf_dir, c.mm_dir, pc.llm_pp_layers, pc.vit_pp_layers, pc.tp_size,
                        fmt=c.ckpt_format, progress=c.progress, model_type=model_type)
    if action == "mm_to_hf":
        pc = c.parallel_config
        given = pc.llm_pp_layers is not None or pc.vit_pp_layers is not None
        return mm_to_hf(c.mm_dir, c.hf_config.hf_dir, c.save_hf_dir, pc.llm_pp_layers, pc.vit_pp_layers,
                         pc.tp_size if given else None, progress=c.progress, model_type=model_type)
    s, t = c.source_parallel_config, c.target_parallel_config
    given = s.llm_pp_layers is not None or s.vit_pp_layers is not None
    return resplit(c.source_dir, c.target_dir, t.llm_pp_layers, t.vit_pp_layers, t.tp_size,
                   s.llm_pp_layers, s.vit_pp_layers, s.tp_size if given else None,
                   hf_dir=c.hf_config.hf_dir, fmt=c.ckpt_format, progress=c.progress, model_type=model_type)


def main(argv=None):
    from .hf_io import CheckpointError
    from .layout import LayoutDirError
    from .names import ConversionError
    from .output_dir import OutputDirError
    from .pp_split import LayoutError
    from .safetensors_io import SafetensorsError
    from .tp_split import TPSplitError
    from auto_convert.torch_format import TorchFormatError, UnsafePickleError
    try:
        out = run(argv)
    except (CheckpointError, LayoutDirError, ConversionError, LayoutError, SafetensorsError, TPSplitError,
            TorchFormatError, UnsafePickleError, OutputDirError) as e:
        print(f"mm-convert: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable output, full disk, a file where a directory must be
        print(f"mm-convert: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"mm-convert: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
