"""Write a Qwen2-VL tokenizer directory offline, from the Qwen BPE ranks shipped in `dashscope`.

    python -m mindspeed_ms.tools.build_tokenizer OUT_DIR [--no-processor]

The Qwen2 tokenizer is a byte-level BPE whose ranks are exactly those of `qwen.tiktoken`
(151,643 tokens) plus 14 special tokens at 151643..151656. A `tokenizers` BPE needs *merges*;
we recover one merge per token the way tiktoken would build it: run BPE on the token's own bytes
using only lower ranks, which must end in exactly two parts (checked). The result has one merge
per non-byte token (151,387), like Qwen2's published merges.txt.

Building takes a few seconds, so the files are cached under `$MINDSPEED_MS_CACHE` (default
`~/.cache/mindspeed_ms`) keyed by the hash of the rank file and of this builder's format version;
later calls only copy files.
"""
import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile

# Bump when the written files change, so stale caches are not reused.
_FORMAT_VERSION = "1"

# Qwen2's pre-tokenizer pattern (identical to the one used by the tiktoken-based Qwen tokenizer).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
SPECIAL_TOKEN_START = 151643

# The chat template of Qwen2-VL-*-Instruct (tokenizer_config.json / chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Released Qwen2-VL preprocessor_config.json values.
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
PROCESSOR_FILES = ("preprocessor_config.json", "chat_template.json")


def default_rank_file():
    """The Qwen BPE ranks file `qwen.tiktoken`: the copy auto_convert.sh unpacks into the environment
    (<venv>/share/mindspeed-ms/), else the one inside an installed `dashscope` package (the `demo`
    extra; found without importing it)."""
    import importlib.util

    unpacked = os.path.join(sys.prefix, "share", "mindspeed-ms", "qwen.tiktoken")
    if os.path.isfile(unpacked):
        return unpacked
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the Qwen vocabulary file qwen.tiktoken was not found: source auto_convert.sh mm (it unpacks it "
            f"into {os.path.dirname(unpacked)}), install the demo extra (pip install 'mindspeed-ms[demo]'), "
            "or pass --rank-file")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "qwen.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: reinstall dashscope or pass --rank-file")
    return path


def load_ranks(rank_file):
    """Read a tiktoken rank file: one `base64(token) rank` per line -> {bytes: rank}."""
    ranks = {}
    with open(rank_file, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{rank_file}:{lineno}: not a 'base64 rank' line ({e})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{rank_file}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _recover_merge(token, rank, ranks):
    # BPE restricted to lower ranks; the last merge that produces `token` joins these two parts.
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_rank is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token rank {rank} ({token!r}) cannot be built from lower-ranked tokens")
    return parts[0], parts[1]


def vocab_and_merges(ranks):
    """Byte-level vocab {str: id} and merges [(str, str)] ordered by the rank of the merged token."""
    b2u = bytes_to_unicode()

    def enc(b):
        return "".join(b2u[x] for x in b)

    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = _recover_merge(tok, rank, ranks)
            merges.append((enc(a), enc(b)))
    return vocab, merges


def _added_tokens():
    return [
        {"id": SPECIAL_TOKEN_START + i, "content": t, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for i, t in enumerate(SPECIAL_TOKENS)
    ]


def tokenizer_json(vocab, merges):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(),
        # Qwen2 normalizes to NFC before splitting (tiktoken does not normalize; see tests).
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": [list(m) for m in merges],
        },
    }


def tokenizer_config():
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in _added_tokens()
        },
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "padding_side": "right",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _write_json(path, obj, indent=2):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def _write_all(out_dir, rank_file):
    ranks = load_ranks(rank_file)
    vocab, merges = vocab_and_merges(ranks)
    _write_json(os.path.join(out_dir, "tokenizer.json"), tokenizer_json(vocab, merges), indent=None)
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config())
    _write_json(os.path.join(out_dir, "vocab.json"), vocab, indent=None)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    _write_json(os.path.join(out_dir, "preprocessor_config.json"), PREPROCESSOR_CONFIG)
    _write_json(os.path.join(out_dir, "chat_template.json"), {"chat_template": CHAT_TEMPLATE})


def _cache_root():
    return os.environ.get("MINDSPEED_MS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mindspeed_ms")


def _cached_build(rank_file):
    h = hashlib.sha256()
    with open(rank_file, "rb") as f:
        h.update(f.read())
    h.update(_FORMAT_VERSION.encode())
    cache = os.path.join(_cache_root(), "qwen2vl_tokenizer", h.hexdigest()[:16])
    if all(os.path.isfile(os.path.join(cache, n)) for n in TOKENIZER_FILES + PROCESSOR_FILES):
        return cache
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    # Build in a sibling temp dir and rename, so concurrent builders never see half-written files.
    tmp = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(cache))
    try:
        _write_all(tmp, rank_file)
        try:
            os.rename(tmp, cache)
        except OSError:
            if not os.path.isdir(cache):  # another process won the race otherwise
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def build_tokenizer(out_dir, rank_file=None, with_processor=True):
    """Write the Qwen2-VL tokenizer files into `out_dir` and return `out_dir`.

    Files: tokenizer.json, tokenizer_config.json (chat template, special tokens), vocab.json,
    merges.txt and, when `with_processor`, preprocessor_config.json and chat_template.json so that
    `Qwen2VLProcessor.from_pretrained(out_dir)` also works.
    """
    rank_file = rank_file or default_rank_file()
    try:
        src = _cached_build(rank_file)
    except OSError:
        # Read-only home or similar: build straight into out_dir.
        os.makedirs(out_dir, exist_ok=True)
        _write_all(out_dir, rank_file)
        if not with_processor:
            for n in PROCESSOR_FILES:
                os.remove(os.path.join(out_dir, n))
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    for name in TOKENIZER_FILES + (PROCESSOR_FILES if with_processor else ()):
        shutil.copyfile(os.path.join(src, name), os.path.join(out_dir, name))
    return out_dir


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mindspeed_ms.tools.build_tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="directory to write the tokenizer files into (created if missing)")
    p.add_argument("--rank-file", default=None, help="tiktoken rank file (default: <venv>/share/mindspeed-ms/qwen.tiktoken, else dashscope/resources/qwen.tiktoken)")
    p.add_argument("--no-processor", action="store_true", help="do not write preprocessor_config.json / chat_template.json")
    args = p.parse_args(argv)
    try:
        out = build_tokenizer(args.out_dir, args.rank_file, with_processor=not args.no_processor)
    except (OSError, ValueError) as e:
        print(f"build_tokenizer: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote Qwen2-VL tokenizer to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
