"""The qwen2vl template equals transformers' Qwen2VLProcessor + chat template (input_ids) and the
documented label mask; truncation keeps vision blocks whole."""
import numpy as np
import pytest
from transformers import AutoTokenizer, Qwen2VLProcessor
from transformers import Qwen2VLImageProcessor as HFImageProcessor

from helpers.images import frames, rgb
from mindspeed_ms.data import Qwen2VLImageProcessor
from mindspeed_ms.data.template import (IGNORE_INDEX, Qwen2VLTemplate, SkipSample, expand_vision_placeholders,
                                        infer_seqlen)
from mindspeed_ms.tools.build_tokenizer import build_tokenizer

LIMITS = dict(min_pixels=3136, max_pixels=128 * 128)
IM_START, IM_END, NL, ASSISTANT = 151644, 151645, 198, 77091


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return AutoTokenizer.from_pretrained(build_tokenizer(str(tmp_path_factory.mktemp("tok"))))


@pytest.fixture(scope="module")
def hf_proc(tok):
    from transformers.video_processing_utils import BaseVideoProcessor

    class NoVideo(BaseVideoProcessor):
        """HF's video processor needs torchvision (absent); images need only the real image processor."""

        def __init__(self):
            self.merge_size = 2

    with pytest.MonkeyPatch.context() as mp:  # its class check resolves to a torchvision dummy here
        mp.setattr(Qwen2VLProcessor, "check_argument_for_proper_class", lambda self, name, arg: None)
        return Qwen2VLProcessor(image_processor=HFImageProcessor(**LIMITS), tokenizer=tok, video_processor=NoVideo(),
                                chat_template=tok.chat_template)


def _hf_messages(messages, system):
    """Our conversation in HF chat form: <image>/<video> become HF's vision placeholders."""
    out = [{"role": "system", "content": system}] if system else []
    for m in messages:
        c = m["content"].replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
        out.append({"role": m["role"], "content": c.replace("<video>", "<|vision_start|><|video_pad|><|vision_end|>")})
    return out


def _expected_labels(ids, train_from_turn=0):
    """Documented mask from HF ids: keep each assistant reply + <|im_end|>\\n of turns >= train_from_turn."""
    labels, inside, turn = [IGNORE_INDEX] * len(ids), False, -1
    i = 0
    while i < len(ids):
        if ids[i:i + 3] == [IM_START, ASSISTANT, NL]:
            inside, turn, i = True, turn + 1, i + 3
            continue
        if inside and turn >= train_from_turn:
            labels[i] = ids[i]
        if inside and ids[i] == IM_END:
            if turn >= train_from_turn:
                labels[i + 1] = ids[i + 1]
            inside, i = False, i + 2
            continue
        i += 1
    return labels


def _ours(tok, messages, images=(), videos=(), system=None, **kw):
    proc = Qwen2VLImageProcessor(**LIMITS)
    img_tok = [int(g.prod()) // 4 for g in proc(images=list(images))["image_grid_thw"]] if images else []
    vid_tok = [int(g.prod()) // 4 for g in proc(videos=list(videos))["video_grid_thw"]] if videos else []
    msgs = expand_vision_placeholders(messages, img_tok, vid_tok)
    return Qwen2VLTemplate(tok).encode_supervised(msgs, system=system, **kw)


CASES = {
    "pure_text": ([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}], 0, 0, None),
    "system": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], 0, 0, "Be brief."),
    "multi_turn_image": ([{"role": "user", "content": "<image>\nDescribe it."},
                          {"role": "assistant", "content": "A gradient with squares."},
                          {"role": "user", "content": "Which colour dominates?"},
                          {"role": "assistant", "content": "Mostly red, some 青色."}], 1, 0, None),
    "multi_image": ([{"role": "user", "content": "Compare <image> and <image>, then <image>."},
                     {"role": "assistant", "content": "They differ in size."}], 3, 0, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_equals_hf_processor(name, tok, hf_proc):
    messages, n_img, _, system = CASES[name]
    images = [rgb(60 + 30 * i, 40 + 50 * i, seed=i) for i in range(n_img)]
    ids, labels = _ours(tok, messages, images, system=system)
    text = hf_proc.apply_chat_template(_hf_messages(messages, system), tokenize=False)
    ref = hf_proc(text=[text], images=images or None, return_tensors="np")["input_ids"][0].tolist()
    assert ids == ref
    assert labels == _expected_labels(ref)


def test_video_equals_hf(tok, hf_proc):
    messages = [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "Nothing."}]
    vid = frames(4, 90, 70)
    ids, labels = _ours(tok, messages, videos=[vid])
    # Qwen2VLProcessor's video branch needs torchvision; it expands <|video_pad|> by the grid exactly
    # like its image branch, so apply that expansion with HF's own video grid.
    grid = HFImageProcessor(**LIMITS)(images=None, videos=[vid], return_tensors="np")["video_grid_thw"][0]
    text = hf_proc.apply_chat_template(_hf_messages(messages, None), tokenize=False)
    text = text.replace("<|video_pad|>", "<|video_pad|>" * (int(np.prod(grid)) // 4))
    ref = tok(text)["input_ids"]
    assert ids == ref and labels == _expected_labels(ref)


def test_train_on_prompt_and_mask_history(tok, hf_proc):
    messages, _, _, _ = CASES["multi_turn_image"]
    img = [rgb(60, 40)]
    ids, labels = _ours(tok, messages, img, train_on_prompt=True)
    assert labels == ids
    ids2, labels2 = _ours(tok, messages, img, mask_history=True)
    assert ids2 == ids
    assert labels2 == _expected_labels(ids, train_from_turn=1)


def test_chat_template_rendering_equals_ours(tok):
    """transformers' apply_chat_template with our tokenizer files == our template ids (prompt part)."""
    msgs = [{"role": "user", "content": "你好, how are you?"}, {"role": "assistant", "content": "Fine 👍"},
            {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "Still fine."}]
    ids, _ = Qwen2VLTemplate(tok).encode_supervised(msgs)
    assert tok.apply_chat_template(msgs, tokenize=True) == ids
    sys_msgs = [{"role": "system", "content": "S"}] + msgs
    ids_s, _ = Qwen2VLTemplate(tok).encode_supervised(msgs, system="S")
    assert tok.apply_chat_template(sys_msgs, tokenize=True) == ids_s


def test_infer_seqlen_matches_reference_cases():
    assert infer_seqlen(10, 10, 100) == (10, 10)
    assert infer_seqlen(100, 10, 50) == (40, 10)
    assert infer_seqlen(10, 100, 50) == (10, 40)
    assert infer_seqlen(100, 100, 50) == (25, 25)


def test_truncation_never_cuts_vision(tok):
    messages = [{"role": "user", "content": "<image>" + " word" * 200},
                {"role": "assistant", "content": "answer" * 50}]
    img = [rgb(112, 112)]  # 16 merged tokens + start/end
    full, _ = _ours(tok, messages, img)
    for cutoff in (30, 64, 100, len(full) - 1):
        ids, labels = _ours(tok, messages, img, cutoff_len=cutoff)
        assert len(ids) == len(labels) <= cutoff
        assert ids.count(151655) == 16 and ids.count(151652) == 1 and ids.count(151653) == 1
        s = ids.index(151652)
        assert ids[s:s + 18] == [151652] + [151655] * 16 + [151653]
    with pytest.raises(SkipSample, match="exceed the sequence length 10"):
        _ours(tok, messages, img, cutoff_len=10)


def test_text_only_truncation_matches_mindspeed_mm(tok):
    # without vision the budget is MindSpeed-MM's: turn 1 gets infer_seqlen, later turns the rest
    messages = [{"role": "user", "content": "a " * 40}, {"role": "assistant", "content": "b " * 40},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    t = Qwen2VLTemplate(tok)
    (s0, t0), (s1, t1) = t.encode_pairs(messages)
    cutoff = 60
    ns, nt = infer_seqlen(len(s0), len(t0), cutoff)
    ids, _ = t.encode_supervised(messages, cutoff_len=cutoff)
    expect = s0[:ns] + t0[:nt]
    rest = cutoff - len(expect)
    if rest > 0:
        ns1, nt1 = infer_seqlen(len(s1), len(t1), rest)
        expect += s1[:ns1] + t1[:nt1]
    assert ids == expect


def test_placeholder_mismatch():
    with pytest.raises(ValueError, match="2 <image> tag.*1 image"):
        expand_vision_placeholders([{"role": "user", "content": "<image><image>"}], [4], [])
    with pytest.raises(ValueError, match="1 <image> tag.*2 image"):
        expand_vision_placeholders([{"role": "user", "content": "<image>"}], [4, 4], [])
    with pytest.raises(ValueError, match="0 <video> tag.*1 video"):
        expand_vision_placeholders([{"role": "user", "content": "x"}], [], [8])


def test_pairwise(tok):
    t = Qwen2VLTemplate(tok)
    prompt = expand_vision_placeholders([{"role": "user", "content": "<image>Q?"}], [4], [])
    c_ids, c_lab, r_ids, r_lab = t.encode_pairwise(prompt, {"role": "assistant", "content": "good answer"},
                                                   {"role": "assistant", "content": "bad"})
    n_prompt = sum(1 for x in c_lab if x == IGNORE_INDEX)
    assert c_ids[:n_prompt] == r_ids[:n_prompt] and n_prompt == sum(1 for x in r_lab if x == IGNORE_INDEX)
    assert tok.decode(c_ids[n_prompt:]) == "good answer<|im_end|>\n"
    c2, _, r2, _ = t.encode_pairwise(prompt, {"role": "assistant", "content": "x " * 100},
                                     {"role": "assistant", "content": "bad"}, cutoff_len=40)
    assert len(c2) <= 40 and c2.count(151655) == 4
