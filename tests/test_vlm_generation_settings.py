"""generation_config -> logits processing equals transformers' processors/warpers; batch splitting."""
import numpy as np
import pytest

from mindspeed_ms.inference.generation_settings import ProcessedTokenChooser, read_generation_config


def _hf_scores(gc, prompt, generated, logits):
    import torch
    from transformers.generation.logits_process import (LogitsProcessorList, MinLengthLogitsProcessor,
                                                        MinNewTokensLengthLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor,
                                                        SuppressTokensLogitsProcessor)
    ids = torch.tensor([prompt + generated])
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(gc["repetition_penalty"]),
                                 MinLengthLogitsProcessor(gc["min_length"], gc["eos_token_id"]),
                                 MinNewTokensLengthLogitsProcessor(len(prompt), gc["min_new_tokens"],
                                                                   gc["eos_token_id"]),
                                 SuppressTokensLogitsProcessor(gc["suppress_tokens"])])
    return procs(ids, torch.tensor(logits[None], dtype=torch.float32))[0].numpy()


@pytest.mark.parametrize("step", [0, 1, 3])
def test_processors_equal_transformers(step):
    gc = {"repetition_penalty": 1.05, "min_length": 7, "min_new_tokens": 2, "eos_token_id": [3, 5],
          "suppress_tokens": [9], "temperature": 0.0, "max_new_tokens": 8}
    s = read_generation_config(gc, "x.json")
    rng = np.random.default_rng(step)
    prompt = [1, 4, 4, 8, 2]
    ch = ProcessedTokenChooser(s, 0, [prompt])
    generated = []
    for _ in range(step):                   # advance the chooser; it records what it picks
        generated += ch(rng.standard_normal((1, 12)).astype(np.float32)).tolist()
    logits = rng.standard_normal(12).astype(np.float32) * 3
    ours = ch._process(logits[None])[0]
    np.testing.assert_allclose(ours, _hf_scores(gc, prompt, generated, logits), rtol=1e-6)


def test_shipped_sampling_is_argmax():
    s = read_generation_config({"temperature": 0.01, "top_k": 1, "top_p": 0.001, "do_sample": True}, "x.json")
    assert s.do_sample and not s.notices
    ch = ProcessedTokenChooser(s, 42, [[1, 2]])
    logits = np.random.default_rng(1).standard_normal((1, 50)).astype(np.float32)
    assert ch(logits)[0] == int(np.argmax(logits))
    s = read_generation_config({"temperature": 0, "do_sample": True}, "x.json")
    assert not s.do_sample and "replaced by temperature > 0" in s.notices[0]


def test_unimplemented_keys_give_notices():
    s = read_generation_config({"no_repeat_ngram_size": 3, "length_penalty": 2.0, "stop_strings": ["x"]}, "x.json")
    text = "\n".join(s.notices)
    assert "no_repeat_ngram_size = 3 has no effect (not implemented here)" in text
    assert "stop_strings" in text and "does not read it either" in text
    assert "length_penalty" not in text      # beam-search only


def test_batches_split_by_vision_patches(monkeypatch):
    import mindspeed_ms.inference.mm_pipeline as mp

    pipe = mp.Qwen2VlPipeline.__new__(mp.Qwen2VlPipeline)
    seen = []
    monkeypatch.setattr(mp.Qwen2VlPipeline, "_answer", lambda self, g: seen.append(len(g)) or [str(len(g))] * len(g))
    monkeypatch.setattr(mp, "MAX_BATCH_PATCHES", 100)
    prompts = [{"input_ids": [1], "pixel_values": np.zeros((n, 3))} for n in (60, 30, 20, 100, 5)] + \
        [{"input_ids": [1]}]
    assert len(pipe.answer(prompts)) == 6
    assert seen == [2, 1, 1, 2]              # 60+30 | 20 | 100 | 5 + the text-only prompt
