"""The offline Qwen2-VL tokenizer equals tiktoken on the same Qwen ranks, and its chat template
renders the ids our `qwen2vl` template produces."""
import random
import unicodedata

import pytest
import tiktoken
from transformers import AutoTokenizer

from mindspeed_ms.tools.build_tokenizer import (
    QWEN_PATTERN, SPECIAL_TOKENS, SPECIAL_TOKEN_START, build_tokenizer, default_rank_file, load_ranks, main)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def hf_tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def tt_enc():
    ranks = load_ranks(default_rank_file())
    special = {t: SPECIAL_TOKEN_START + i for i, t in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=special)


_WORDS = ("the quick brown fox jumps over lazy dog I'm we'll they've DON'T It's HELLO world "
          "tokenization internationalization 12345 3.14159 e-mail http://example.com/a?b=c").split()
_ZH = "我们今天去北京大学看一看人工智能的发展历史非常有意思吗？是的。"
_CODE = ["def f(x):\n    return x**2  # square\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
         "SELECT * FROM t WHERE id=='x';", "    \n\n\t\t  \r\n", "λx. x ≠ ∞ ≥ ≤ ∑ ∫", "if a!=b and c>=d:\n\n\n    pass"]
_EMOJI = "😀🎉👍🏽👨‍👩‍👧‍👦🇨🇳❤️🔥✨"


def _strings(n=320, seed=0):
    rng = random.Random(seed)
    out = ["Hello, world!", "", " ", "  ", "\n", "\r\n\r\n", "a" * 300, " " * 65, "\t" * 9 + "x",
           "1234567890" * 5, "<|im_start|> is literal text here", _ZH, _EMOJI] + _CODE
    pools = [lambda: rng.choice(_WORDS), lambda: _ZH[rng.randrange(len(_ZH)):][: rng.randint(1, 8)],
             lambda: rng.choice(_CODE), lambda: rng.choice(_EMOJI), lambda: " " * rng.randint(1, 9),
             lambda: rng.choice(["\n", "\n\n", "\t", "\r\n", "  \n  "]), lambda: str(rng.randint(0, 10 ** 9)),
             lambda: "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 6)))]
    while len(out) < n:
        out.append("".join(rng.choice(pools)() + rng.choice(["", " "]) for _ in range(rng.randint(1, 25))))
    # Qwen2's tokenizer.json applies NFC first; tiktoken does not, so compare on NFC text.
    return [unicodedata.normalize("NFC", s) for s in out]


def test_known_ids(hf_tok):
    assert hf_tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert hf_tok("<|im_start|>user\n").input_ids == [151644, 872, 198]
    assert len(hf_tok) == 151657
    for i, t in enumerate(SPECIAL_TOKENS):
        assert hf_tok.convert_tokens_to_ids(t) == 151643 + i
    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.pad_token_id == 151643


def test_equals_tiktoken_on_varied_strings(hf_tok, tt_enc):
    strings = _strings()
    assert len(strings) >= 300
    for s in strings:
        ours = hf_tok(s, add_special_tokens=False).input_ids
        ref = tt_enc.encode(s, allowed_special="all")  # HF parses special tokens in text too
        assert ours == ref, repr(s)
        assert hf_tok.decode(ours) == s


def test_special_tokens_split(hf_tok, tt_enc):
    s = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|vision_start|><|image_pad|><|vision_end|>"
    assert hf_tok(s).input_ids == tt_enc.encode(s, allowed_special="all")


def test_cli_and_cache(tmp_path, monkeypatch, hf_tok):
    monkeypatch.setenv("MINDSPEED_MS_CACHE", str(tmp_path / "cache"))
    assert main([str(tmp_path / "a")]) == 0
    assert main([str(tmp_path / "b"), "--no-processor"]) == 0  # served from the cache
    assert (tmp_path / "a" / "preprocessor_config.json").exists()
    assert not (tmp_path / "b" / "preprocessor_config.json").exists()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    t = AutoTokenizer.from_pretrained(str(tmp_path / "b"))
    assert t("x = 1").input_ids == hf_tok("x = 1").input_ids


def test_bad_rank_file(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not-a-line\n")
    with pytest.raises(ValueError, match="bad.tiktoken:1"):
        load_ranks(str(bad))
