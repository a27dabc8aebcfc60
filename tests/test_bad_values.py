"""Bad flag values and model.json keys are refused (or noticed) before the model is built."""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_synthetic import TINY_MODEL, small_model_json  # noqa: E402

from mindspeed_ms.arguments import ArgumentError, parse_args, validate_args  # noqa: E402

BASE = "--seq-length 64 --train-iters 4 --lr 1e-3"


def validate(tmp_path, flags, model_json=None):
    mj = model_json or small_model_json(str(tmp_path / "model.json"))
    args = parse_args(f"--mm-model {mj} {BASE} {flags}".split())
    return validate_args(args, 1, "CPU", require_data=False)


@pytest.mark.parametrize("flags,words", [
    ("--lr=-1e-3", ["--lr -0.001", ">= 0"]),
    ("--adam-beta1 1.0", ["--adam-beta1 1.0", "[0, 1)"]),
    ("--adam-beta1 -0.1", ["--adam-beta1", "[0, 1)"]),
    ("--adam-beta2 1.5", ["--adam-beta2 1.5"]),
    ("--adam-eps 0", ["--adam-eps 0"]),
    ("--clip-grad -1", ["--clip-grad -1.0", ">= 0"]),
    ("--weight-decay -0.1", ["--weight-decay -0.1"]),
    ("--min-lr 1e-2", ["--min-lr 0.01", "above --lr 0.001"]),
    ("--min-lr -1", ["--min-lr -1.0"]),
    ("--lr-warmup-fraction 2", ["--lr-warmup-fraction 2.0", "[0, 1]"]),
    ("--lr-warmup-fraction -0.5", ["--lr-warmup-fraction -0.5"]),
    ("--lr-warmup-fraction 1.0", ["warm-up", "not shorter than the decay"]),
    ("--lr-warmup-iters 10", ["warm-up", "not shorter than the decay"]),
    ("--lr-decay-iters 0", ["--lr-decay-iters 0"]),
    ("--seed -3", ["--seed -3"]),
    ("--eval-iters -1", ["--eval-iters -1"]),
])
def test_bad_flag_values_refused(tmp_path, flags, words):
    with pytest.raises(ArgumentError) as e:
        validate(tmp_path, flags)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_good_values_pass(tmp_path):
    validate(tmp_path, "--adam-beta1 0 --adam-beta2 0.95 --clip-grad 0 --weight-decay 0 --min-lr 1e-3 "
                       "--lr-warmup-fraction 0.5 --lr-decay-style cosine")


def test_bad_value_through_main_is_one_line(tmp_path, capsys):
    from mindspeed_ms.training.pretrain import main
    data = tmp_path / "data.json"
    data.write_text("{}")
    mj = small_model_json(str(tmp_path / "model.json"))
    rc = main(f"--mm-data {data} --mm-model {mj} {BASE} --adam-beta1 1".split())
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --adam-beta1 1.0") and "\n" not in err


def _model_json(tmp_path, edit):
    cfg = json.load(open(TINY_MODEL))
    edit(cfg)
    p = tmp_path / "edited.json"
    p.write_text(json.dumps(cfg))
    return str(p)


@pytest.mark.parametrize("section,key", [
    ("vision", "num_attention_heads"), ("vision", "num_layers"), ("vision", "hidden_size"),
    ("vision", "patch_size"), ("vision", "spatial_merge_size"),
    ("text", "num_attention_heads"), ("text", "vocab_size"), ("text", "hidden_size"), ("text", "num_layers"),
])
def test_missing_structure_key_refused(tmp_path, section, key):
    def drop(cfg):
        (cfg["image_encoder"]["vision_encoder"] if section == "vision" else cfg["text_decoder"]).pop(key)
    mj = _model_json(tmp_path, drop)
    with pytest.raises(ArgumentError, match=rf"{mj}.*has no {key}.*MindSpeed-MM has no default"):
        validate(tmp_path, "", mj)


@pytest.mark.parametrize("where,key,shown", [
    ("vision", "layernorm_epsilon", "1e-06"), ("text", "rope_theta", "1000000.0"),
    ("text", "layernorm_epsilon", "1e-06"), ("vision", "hidden_dropout", "0.0"),
])
def test_defaulted_key_noticed(tmp_path, where, key, shown):
    def drop(cfg):
        (cfg["image_encoder"]["vision_encoder"] if where == "vision" else cfg["text_decoder"]).pop(key)
    mj = _model_json(tmp_path, drop)
    notices = validate(tmp_path, "", mj).notices
    hits = [n for n in notices if f"no {'image_encoder.vision_encoder' if where == 'vision' else 'text_decoder'}.{key};"
            in n]
    assert len(hits) == 1 and f"using {shown}" in hits[0], notices
    full = validate(tmp_path, "").notices        # the shipped file has every key: no such notice
    assert not [n for n in full if "has no" in n]


@pytest.mark.parametrize("edit,words", [
    (lambda c: c["text_decoder"].update(layernorm_epsilon=-1e-6), ["text_decoder.layernorm_epsilon is -1e-06",
                                                                   "positive"]),
    (lambda c: c["image_encoder"]["vision_encoder"].update(layernorm_epsilon=0.0), ["layernorm_epsilon is 0.0"]),
    (lambda c: c["text_decoder"].update(hidden_dropout=1.5), ["hidden_dropout is 1.5"]),
    (lambda c: c["text_decoder"].update(vocab_size=100), ["img_context_token_id", "vocab_size 100"]),
    (lambda c: c["text_decoder"].update(vocab_size=-5), ["vocab_size is -5"]),
])
def test_bad_model_json_values_refused(tmp_path, edit, words):
    mj = _model_json(tmp_path, edit)
    with pytest.raises(ArgumentError) as e:
        validate(tmp_path, "", mj)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_every_released_model_json_passes_without_notice():
    """MindSpeed-MM's own model files (every release fixture) carry every key the checks ask for."""
    import glob
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.config.model_json_checks import check_model_json
    files = sorted(glob.glob(os.path.join(HERE, "fixtures", "mindspeed_mm_configs", "*", "*model*.json")))
    assert len(files) >= 10
    for p in files:
        assert check_model_json(p, load_model_json(p)) == [], p
