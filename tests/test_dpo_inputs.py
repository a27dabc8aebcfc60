"""Bad input to posttrain_qwen2vl_dpo.py and to LoRA loading: one clear error before any compute."""
import json
import os
import re
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_synthetic import small_model_json  # noqa: E402

from mindspeed_ms.rl.posttrain import main  # noqa: E402
from mindspeed_ms.training.checkpointing import save_checkpoint  # noqa: E402

ROOT = os.path.dirname(HERE)
DPO_JSON = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "data_tiny_dpo.json")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo_inputs")
    from mindspeed_ms.tools.build_tokenizer import build_tokenizer
    from mindspeed_ms.rl.make_preference_dataset import make_preference_dataset
    build_tokenizer(str(d / "tok"), None, with_processor=True)
    make_preference_dataset(str(d / "pref"), n_train=2, n_val=0)
    base = json.load(open(DPO_JSON))
    bp = base["dataset_param"]["basic_parameters"]
    base["dataset_param"]["preprocess_parameters"]["model_name_or_path"] = str(d / "tok")
    bp.update(dataset_dir=str(d / "pref"), dataset=str(d / "pref" / "train.json"), cache_dir=str(d / "cache"))
    bp.pop("val_dataset")
    good = d / "data_dpo.json"
    good.write_text(json.dumps(base))
    # the same samples without the rejected answer
    samples = json.load(open(d / "pref" / "train.json"))
    for s in samples:
        del s["rejected"]
    (d / "pref" / "norej.json").write_text(json.dumps(samples))
    bp["dataset"] = str(d / "pref" / "norej.json")
    norej = d / "data_norej.json"
    norej.write_text(json.dumps(base))
    sft = json.load(open(os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "data_tiny.json")))
    sft_path = d / "data_sft.json"
    sft_path.write_text(json.dumps(sft))
    ck = d / "ck"
    save_checkpoint(str(ck), 3, {"text_decoder.decoder.final_layernorm.weight": np.ones(64, np.float32)})
    release = d / "release"
    os.makedirs(release / "release")
    (release / "latest_checkpointed_iteration.txt").write_text("release")
    return {"dir": d, "model": small_model_json(str(d / "model.json")), "good": str(good), "norej": str(norej),
            "sft": str(sft_path), "iter_ck": str(ck), "release": str(release)}


def run(files, extra, data="good"):
    argv = (f"--mm-model {files['model']} --mm-data {files[data]} --seq-length 64 --lr 1e-3 --train-iters 2 "
            f"--micro-batch-size 1 " + extra).split()
    return main(argv)


@pytest.mark.parametrize("extra,msg", [
    ("--dpo-loss-type ipo --load {release}", r"--dpo-loss-type: invalid choice: 'ipo' \(choose from 'sigmoid'\)"),
    ("--dpo-loss-type hinge --load {release}", r"choose from 'sigmoid'"),
    ("--dpo-label-smoothing 0.6 --load {release}", r"--dpo-label-smoothing must be in \[0, 0.5\], got 0.6"),
    ("--dpo-label-smoothing -0.1 --load {release}", r"--dpo-label-smoothing must be in \[0, 0.5\]"),
    ("--dpo-beta 0 --load {release}", r"--dpo-beta must be > 0"),
    ("--ref-model {dir}/nothing --load {release}", r"--ref-model .*/nothing: no such directory"),
    ("--ref-model {dir} --load {release}", r"--ref-model .* holds no checkpoint"),
    ("", r"DPO needs a frozen reference model: pass --ref-model"),
    ("--load {iter_ck}", r"is an iteration checkpoint.*pass it with --ref-model"),
    ("--load-base-model {release} --load {release}", r"--load-base-model is given without --lora-target-modules"),
    ("--lora-target-modules linear_qkv --lora-r 0 --load {release}", r"--lora-r must be a positive rank"),
    ("--lora-target-modules linear_qkv --load-base-model {dir}/none", r"--load-base-model .*/none: no checkpoint"),
])
def test_bad_flags(files, capsys, extra, msg):
    assert run(files, extra.format(**files)) == 2
    assert re.search(msg, capsys.readouterr().err), msg


def test_sft_data_is_rejected(files, capsys):
    assert run(files, f"--load {files['release']}", data="sft") == 2
    assert "DPO needs ranking data (attr.ranking: true" in capsys.readouterr().err


def test_ranking_data_without_rejected(files, capsys):
    assert run(files, f"--load {files['release']}", data="norej") == 2
    err = capsys.readouterr().err
    assert "norej.json: sample 0" in err and "column 'rejected'" in err and "attr.rejected" in err


def test_lora_checkpoint_as_base_needs_load_base_model(files, tmp_path):
    """A LoRA-only checkpoint given where the base model is expected says what to add."""
    import mindspore as ms
    from mindspeed_ms.config.model_config import load_model_json
    from mindspeed_ms.models.qwen2vl.model import Qwen2VLForConditionalGeneration
    from mindspeed_ms.peft.lora_model import apply_lora
    from mindspeed_ms.peft.lora_training import load_base_weights
    from mindspeed_ms.training.trainer import TrainingError
    ms.set_context(mode=ms.GRAPH_MODE)
    model = Qwen2VLForConditionalGeneration(load_model_json(files["model"]))
    adapters = apply_lora(model, ["linear_proj"])
    save_checkpoint(str(tmp_path / "lora"), 5, adapters.state_dict())
    with pytest.raises(TrainingError, match="holds LoRA adapter weights only.*--load-base-model"):
        load_base_weights(model, str(tmp_path / "lora"), adapters)
    # a full checkpoint loads every base tensor and leaves the adapters as they are
    base_sd = {k: v + 1.0 for k, v in model.mm_state_dict().items() if k not in adapters.params and k != "lora_gate"}
    save_checkpoint(str(tmp_path / "base"), 1, base_sd)
    a_before = adapters.state_dict()
    load_base_weights(model, str(tmp_path / "base"), adapters)
    name = "text_decoder.decoder.layers.0.mlp.linear_fc1.weight"
    np.testing.assert_array_equal(model.parameters_dict()[name].asnumpy(), base_sd[name])
    for k, v in adapters.state_dict().items():
        np.testing.assert_array_equal(v, a_before[k])


