"""Ask a Qwen2-VL model about images from the command line.

    python -m mindspeed_ms.inference.chat --load CKPT_OR_HF_DIR --image PATH --prompt "What colour is the shape?"

`--load` takes an HF directory (e.g. the output of `mm-convert ... mm_to_hf`) or a MindSpeed-MM
checkpoint directory (a training `--save` dir at its latest iteration, or `--iteration N`; add
`--mm-model model.json` and `--tokenizer HF_DIR` or `--mm-data data.json`). Pass `--mm-data` with the
data.json used for training so images are resized the way the model saw them. Greedy by default;
`--do-sample --temperature T --top-p P` samples. The answer is printed on stdout.
"""
import argparse
import sys


def add_load_args(p):
    """Where the model, its tokenizer and its image limits come from (chat, evaluate and serve)."""
    p.add_argument("--load", required=True, help="HF model dir or MindSpeed-MM checkpoint dir")
    p.add_argument("--mm-model", help="model.json (needed for a MindSpeed-MM checkpoint)")
    p.add_argument("--mm-data", help="data.json: tokenizer dir (model_name_or_path) and image pixel limits")
    p.add_argument("--tokenizer", help="directory with the tokenizer files (default: --load for HF dirs)")
    p.add_argument("--iteration", help="checkpoint iteration to load (number or 'release'; default: latest)")
    p.add_argument("--image-max-pixels", type=int, help="override data.json's image_max_pixels")
    p.add_argument("--image-min-pixels", type=int, help="override data.json's image_min_pixels")
    p.add_argument("--system", help="system prompt (default: the template's)")


def add_model_args(p):
    add_load_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--no-cache", action="store_true", help="recompute the full sequence each step (slow; a check)")


def load_from_args(a):
    """(LoadedModel, PromptBuilder) from parsed `add_load_args` arguments."""
    from mindspeed_ms.inference.loading import load_for_inference, read_data_json_preprocess
    from mindspeed_ms.inference.prompt import PromptBuilder
    from mindspeed_ms.inference.runtime import setup_inference_context

    setup_inference_context()
    pp = read_data_json_preprocess(a.mm_data) if a.mm_data else {}
    loaded = load_for_inference(a.load, a.mm_model, a.tokenizer, a.iteration, a.mm_data)
    builder = PromptBuilder(loaded.tokenizer_dir, a.image_max_pixels or pp.get("image_max_pixels"),
                            a.image_min_pixels or pp.get("image_min_pixels"), a.system, video=pp)
    return loaded, builder


def build_from_args(a):
    """(LoadedModel, PromptBuilder, SamplingConfig) from parsed model arguments."""
    from mindspeed_ms.inference.sampling import SamplingConfig

    sampling = SamplingConfig(a.do_sample, a.temperature, a.top_p, a.top_k, a.seed)
    loaded, builder = load_from_args(a)
    return loaded, builder, sampling


def answer(loaded, builder, sampling, messages, images=(), max_new_tokens=64, use_cache=True):
    from mindspeed_ms.inference.generate import generate

    prompt = builder.build(messages, images)
    batch = builder.batch([prompt])
    out = generate(loaded.model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                   batch.get("image_grid_thw"), max_new_tokens=max_new_tokens, sampling=sampling,
                   stop_token_ids=builder.stop_ids, pad_token_id=builder.pad_id, use_cache=use_cache)
    return builder.decode(out.tokens[0])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.inference.chat", description=__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several images)")
    p.add_argument("--prompt", required=True, help="the question; '<image>' tags place the images (default: first)")
    a = p.parse_args(argv)
    try:
        loaded, builder, sampling = build_from_args(a)
        text = answer(loaded, builder, sampling, [{"role": "user", "content": a.prompt}], a.image,
                      a.max_new_tokens, not a.no_cache)
    except (ValueError, OSError) as e:
        print(f"chat: error: {e}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
