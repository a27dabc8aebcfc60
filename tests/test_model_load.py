"""Loading weights: bf16 HF checkpoints, MM state dicts by name, and clear mismatch errors."""
import numpy as np
import pytest
import torch

import mindspore as ms

from helpers.hf_tiny import randomize_, tiny_hf_config
from mindspeed_ms.config.model_config import config_from_hf
from mindspeed_ms.models.qwen2vl import Qwen2VLForConditionalGeneration
from transformers import Qwen2VLForConditionalGeneration as HFModel


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    hf = randomize_(HFModel(tiny_hf_config("untied")), seed=4).to(torch.bfloat16)
    d = tmp_path_factory.mktemp("bf16")
    hf.save_pretrained(d, safe_serialization=True)
    return d, hf


def test_bf16_checkpoint_loads_as_fp32(bf16_dir):
    d, hf = bf16_dir
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = Qwen2VLForConditionalGeneration.from_pretrained(d)
    p = model.parameters_dict()
    assert p["text_decoder.output_layer.weight"].dtype == ms.float32
    np.testing.assert_array_equal(p["text_decoder.output_layer.weight"].asnumpy(), hf.lm_head.weight.detach().float().numpy())
    np.testing.assert_array_equal(p["image_encoder.encoder.patch_embed.proj.weight"].asnumpy(),
                                  hf.model.visual.patch_embed.proj.weight.detach().float().numpy())


def test_mm_state_dict_round_trip_and_errors(bf16_dir):
    d, _ = bf16_dir
    model = Qwen2VLForConditionalGeneration.from_pretrained(d)
    sd = model.mm_state_dict()
    other = Qwen2VLForConditionalGeneration(config_from_hf(str(d)))
    other.load_mm_state_dict(sd)
    for k, v in other.mm_state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    bad = dict(sd)
    bad.pop("text_decoder.decoder.final_layernorm.weight")
    bad["text_decoder.decoder.final_norm.weight"] = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match=r"missing \['text_decoder\.decoder\.final_layernorm\.weight'\].*"
                                         r"unknown \['text_decoder\.decoder\.final_norm\.weight'\]"):
        other.load_mm_state_dict(bad)
    bad = dict(sd)
    bad["text_decoder.output_layer.weight"] = np.zeros((10, 64), np.float32)
    with pytest.raises(ValueError, match=r"text_decoder\.output_layer\.weight: checkpoint shape \(10, 64\) != model shape \(1024, 64\)"):
        other.load_mm_state_dict(bad)


def test_unknown_attention_backend_is_an_error(bf16_dir):
    d, _ = bf16_dir
    with pytest.raises(ValueError, match="attention backend 'sdpa' unknown"):
        Qwen2VLForConditionalGeneration(config_from_hf(str(d)), attention_backend="sdpa")
