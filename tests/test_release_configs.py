"""Every Qwen2-VL model_*.json / data_*.json that a MindSpeed-MM release (2.0.0 .. 26.0.0; 26.1.0
ships none) carries loads unchanged; our shipped model files are the newest release's; the tiny
config runs from a model.json with the 2.2.0+ keys."""
import glob
import json
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_synthetic import IMG_PAD, V_START, VID_PAD, VOCAB, make_samples  # noqa: E402

from mindspeed_ms.config.data_config import load_data_json  # noqa: E402
from mindspeed_ms.config.model_config import ModelConfigError, load_model_json, model_config_from_dict  # noqa: E402

FIX = os.path.join(HERE, "fixtures", "mindspeed_mm_configs")
EX = os.path.join(HERE, "..", "examples", "mindspore", "qwen2vl")
RELEASE_FILES = sorted(glob.glob(os.path.join(FIX, "v*", "*.json")))
NEWEST = "v26.0.0"


def _rel(path):
    return os.path.relpath(path, FIX)


def test_fixtures_cover_the_releases():
    tags = {p.split(os.sep)[-2] for p in RELEASE_FILES}
    assert {"v2.0.0", "v2.1.0", "v2.2.0", NEWEST} <= tags
    assert len([p for p in RELEASE_FILES if "model_" in os.path.basename(p)]) >= 10


@pytest.mark.parametrize("path", RELEASE_FILES, ids=_rel)
def test_release_file_loads(path):
    if os.path.basename(path).split("_", 1)[0] in ("model", "ms", "st") and "model_" in os.path.basename(path):
        cfg = load_model_json(path)
        raw = json.load(open(path))
        mask = raw["image_encoder"]["vision_encoder"].get("attention_mask_type")
        assert cfg.vision.attention_mask_type == mask
        assert cfg.text.num_layers == raw["text_decoder"]["num_layers"]
    else:
        cfg = load_data_json(path)
        assert cfg.basic_parameters.template in ("qwen2vl", "qwen2_vl")


def _paths(d, pre=""):
    for k, v in d.items():
        if isinstance(v, dict) and k != "rope_scaling":
            yield from _paths(v, pre + k + ".")
        else:
            yield pre + k


@pytest.mark.parametrize("size", ["2b", "7b", "72b"])
def test_shipped_model_files_are_the_newest_release(size):
    ours = json.load(open(os.path.join(EX, f"model_{size}.json")))
    theirs = json.load(open(os.path.join(FIX, NEWEST, f"ms_model_{size}.json")))
    assert ours == theirs
    assert ours["image_encoder"]["vision_encoder"]["attention_mask_type"] == "general"
    assert "num_attention_heads" not in ours["image_encoder"]["vision_projector"]


def test_tiny_has_every_newest_release_key():
    tiny = set(_paths(json.load(open(os.path.join(EX, "model_tiny.json")))))
    newest = set(_paths(json.load(open(os.path.join(FIX, NEWEST, "ms_model_7b.json")))))
    assert newest <= tiny


@pytest.mark.parametrize("value", ["causal", "padding", 3])
def test_unsupported_vision_mask_type_is_refused(value):
    data = json.load(open(os.path.join(EX, "model_tiny.json")))
    data["image_encoder"]["vision_encoder"]["attention_mask_type"] = value
    with pytest.raises(ModelConfigError, match=r"m\.json: key 'image_encoder\.vision_encoder\.attention_mask_type'"):
        model_config_from_dict(data, "m.json")


def test_unknown_key_still_an_error():
    data = json.load(open(os.path.join(FIX, NEWEST, "ms_model_7b.json")))
    data["image_encoder"]["vision_encoder"]["attention_mask_typ"] = "general"
    with pytest.raises(ModelConfigError, match=r"unknown key 'image_encoder\.vision_encoder\.attention_mask_typ'"):
        model_config_from_dict(data, "m.json")


def _release_shaped_tiny(path):
    """The newest release's 7B model.json with its key set unchanged and the tiny sizes as values
    (a key the tiny file lacks keeps the release's value), vocabulary as in the loop tests."""
    tiny = json.load(open(os.path.join(EX, "model_tiny.json")))

    def fill(rel, small):
        return {k: (fill(v, small.get(k, {})) if isinstance(v, dict) and k != "rope_scaling"
                    else small.get(k, v)) for k, v in rel.items()}
    cfg = fill(json.load(open(os.path.join(FIX, NEWEST, "ms_model_7b.json"))), tiny)
    cfg["text_decoder"]["vocab_size"] = VOCAB
    cfg["img_context_token_id"], cfg["vision_start_token_id"] = IMG_PAD, V_START
    cfg["video_token_id"] = VID_PAD
    cfg["image_encoder"]["vision_encoder"]["freeze"] = False
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


@pytest.mark.slow      # every training test already runs model_tiny.json, which has the 2.2.0+ keys
def test_tiny_config_trains_from_a_release_shaped_model_json(tmp_path):
    from test_train_loop import make_trainer, run
    mj = _release_shaped_tiny(str(tmp_path / "model_release.json"))
    assert json.load(open(mj))["image_encoder"]["vision_encoder"]["attention_mask_type"] == "general"
    samples = make_samples(4, seed=5)
    tr = make_trainer(tmp_path, "--lr 5e-3 --train-iters 3 --micro-batch-size 2 --global-batch-size 2 "
                                "--lr-decay-style constant", samples, model_json=mj)
    losses = run(tr, 3)
    assert all(np.isfinite(losses)) and tr.startup.model.vision.attention_mask_type == "general"


def test_model_json_kernel_switches_say_they_do_nothing_and_dropout_is_refused():
    from mindspeed_ms.config.model_config import model_no_effect_notices
    cfg = load_model_json(os.path.join(FIX, NEWEST, "ms_model_7b.json"))
    notes = model_no_effect_notices(cfg)
    assert [n.split(": ", 1)[1].split(" = ")[0] for n in notes] == [
        "image_encoder.vision_encoder.use_fused_rotary_pos_emb", "text_decoder.use_fused_rotary_pos_emb"]
    assert all("has no effect here (" in n for n in notes)
    data = json.load(open(os.path.join(EX, "model_tiny.json")))
    data["text_decoder"]["hidden_dropout"] = 0.1
    with pytest.raises(ModelConfigError, match=r"text_decoder\.hidden_dropout' is 0\.1; dropout is not implemented"):
        model_config_from_dict(data, "m.json")
