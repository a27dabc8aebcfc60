"""Ask a Qwen2-VL model about images from the command line.

    python -m mindspeed_ms.inference.chat --load CKPT_OR_HF_DIR --image PATH --prompt "What colour is the shape?"
    python -m mindspeed_ms.inference.chat --load CKPT_OR_HF_DIR          # interactive: several turns

Without --prompt the command is interactive: each line is a user turn and the answer streams back
(`Assistant: ...`); `/image PATH` and `/video PATH` attach media to the next turn, `/clear` starts
a new conversation, `/exit` (or end of input) quits. The whole conversation is the prompt of each
turn, as in a multi-turn training sample.

`--load` takes an HF directory (e.g. the output of `mm-convert ... mm_to_hf`) or a MindSpeed-MM
checkpoint directory (a training `--save` dir at its latest iteration, or `--iteration N`; add
`--mm-model model.json` and `--tokenizer HF_DIR` or `--mm-data data.json`). Pass `--mm-data` with the
data.json used for training so images are resized the way the model saw them. Greedy by default;
`--do-sample --temperature T --top-p P` samples. The answer is printed on stdout.
"""
import argparse
import sys
from mindspeed_ms.help_format import DefaultsHelpFormatter


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
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens generated per answer")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (with --do-sample)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top tokens up to this mass (1: all)")
    p.add_argument("--top-k", type=int, default=0, help="keep only the k most likely tokens (0: no limit)")
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


def answer(loaded, builder, sampling, messages, images=(), max_new_tokens=64, use_cache=True, videos=(),
           on_text=None):
    """The model's answer to `messages` (the last one a user turn). `on_text(piece)` receives the
    answer piece by piece while it is generated (the pieces join to the returned text)."""
    from mindspeed_ms.inference.generate import generate
    from mindspeed_ms.inference.serve_protocol import TextStream

    prompt = builder.build(messages, images, videos)
    batch = builder.batch([prompt])
    stream = TextStream(builder.tokenizer, builder.stop_ids, ())

    def hook(next_ids, live):
        piece = stream.push(int(next_ids[0])) if live[0] else ""
        if piece and on_text is not None:
            on_text(piece)

    out = generate(loaded.model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                   batch.get("image_grid_thw"), batch.get("pixel_values_videos"), batch.get("video_grid_thw"),
                   max_new_tokens=max_new_tokens, sampling=sampling, stop_token_ids=builder.stop_ids,
                   pad_token_id=builder.pad_id, use_cache=use_cache, streamer=hook)
    piece, text = stream.finish()
    if piece and on_text is not None:
        on_text(piece)
    return text  # == builder.decode(out.tokens[0]): the pieces decode the same tokens


HELP = ("commands: /image PATH and /video PATH attach media to your next message, /clear starts a new "
        "conversation, /exit quits (so does end of input); any other line is your message")


def interactive(loaded, builder, sampling, max_new_tokens=64, use_cache=True, stdin=None, stdout=None,
                stderr=None):
    """Read user turns from `stdin` until /exit or end of input; returns 0. A bad /image or /video
    path, or a turn the model cannot take, prints `chat: error: ...` and the session goes on."""
    import os
    from dataclasses import replace

    from mindspeed_ms.data.image_io import MediaError, load_image
    from mindspeed_ms.data.template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    tty = stdin.isatty()
    print(f"chat: interactive ({HELP})", file=stderr)
    history, images, videos = [], [], []
    pending_img, pending_vid = [], []
    turn = 0
    while True:
        if tty:
            print("User: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/exit", "/quit"):
            break
        if cmd == "/help":
            print(HELP, file=stderr)
            continue
        if cmd == "/clear":
            history, images, videos, pending_img, pending_vid = [], [], [], [], []
            print("chat: new conversation", file=stderr)
            continue
        if cmd in ("/image", "/video"):
            if not arg:
                print(f"chat: error: {cmd} needs a path, e.g. {cmd} photo.png", file=stderr)
                continue
            try:
                if cmd == "/image":
                    load_image(arg)
                    pending_img.append(arg)
                elif not os.path.exists(arg):
                    raise MediaError(f"video not found: {arg}")
                else:
                    pending_vid.append(arg)
            except MediaError as e:
                print(f"chat: error: {e}", file=stderr)
                continue
            print(f"chat: {cmd[1:]} {arg} attached to your next message", file=stderr)
            continue
        if cmd.startswith("/") and cmd[1:].isalpha():  # "/usr/bin ..." stays a message
            print(f"chat: error: unknown command {cmd}; {HELP}", file=stderr)
            continue
        content = IMAGE_PLACEHOLDER * len(pending_img) + VIDEO_PLACEHOLDER * len(pending_vid) + line
        messages = history + [{"role": "user", "content": content}]
        turn_sampling = replace(sampling, seed=sampling.seed + turn)
        print("Assistant: ", end="", file=stdout, flush=True)
        try:
            text = answer(loaded, builder, turn_sampling, messages, images + pending_img, max_new_tokens, use_cache,
                          videos + pending_vid, on_text=lambda piece: print(piece, end="", file=stdout, flush=True))
        except (ValueError, OSError) as e:
            print("", file=stdout)
            print(f"chat: error: {e} (the turn is dropped)", file=stderr)
            pending_img, pending_vid = [], []
            continue
        print("", file=stdout, flush=True)
        history = messages + [{"role": "assistant", "content": text}]
        images, videos = images + pending_img, videos + pending_vid
        pending_img, pending_vid = [], []
        turn += 1
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.inference.chat", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several images)")
    p.add_argument("--video", action="append", default=[],
                   help="video (file, frame directory or GIF; repeat for several), with --prompt")
    p.add_argument("--prompt", help="the question; '<image>'/'<video>' tags place the media (default: first). "
                                    "Without --prompt: interactive mode")
    return p


def main(argv=None):
    p = build_parser()
    a = p.parse_args(argv)
    if a.prompt is None and (a.image or a.video):
        p.error("--image/--video go with --prompt; in interactive mode attach media with /image PATH, /video PATH")
    try:
        loaded, builder, sampling = build_from_args(a)
        if a.prompt is None:
            return interactive(loaded, builder, sampling, a.max_new_tokens, not a.no_cache)
        text = answer(loaded, builder, sampling, [{"role": "user", "content": a.prompt}], a.image,
                      a.max_new_tokens, not a.no_cache, a.video)
    except (ValueError, OSError) as e:
        print(f"chat: error: {e}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
