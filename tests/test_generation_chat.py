"""The chat command on a MindSpeed-MM checkpoint (any iteration) and on its mm_to_hf HF directory
gives the same text; the evaluation command reports per-type accuracy; bad --load input is clear."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import mindspore as ms

from mindspeed_ms.checkpoint.converter import mm_to_hf
from mindspeed_ms.checkpoint.hf_io import load_hf_config, load_hf_state_dict
from mindspeed_ms.checkpoint.names import hf_to_mm_state_dict
from mindspeed_ms.inference import chat, evaluate
from mindspeed_ms.tools.make_demo_dataset import make_demo_dataset
from mindspeed_ms.tools.make_tiny_checkpoint import DEFAULT_MODEL_JSON, make_tiny_checkpoint
from mindspeed_ms.training.checkpointing import save_checkpoint

# synchronous PYNATIVE must be chosen before the first op of the process (see inference/runtime.py)
ms.set_context(mode=ms.PYNATIVE_MODE, pynative_synchronize=True)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    hf = make_tiny_checkpoint(str(root / "hf"), DEFAULT_MODEL_JSON, seed=5)
    base = hf_to_mm_state_dict(load_hf_state_dict(hf), load_hf_config(hf))
    rng = np.random.default_rng(0)
    mm = str(root / "save")
    # two "training" iterations with different weights, saved the way the trainer saves them
    iters = {}
    for it, scale in ((3, 0.5), (7, 1.0)):
        sd = {k: (v + scale * 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}
        save_checkpoint(mm, it, sd)
        iters[it] = sd
    out = mm_to_hf(mm, hf, str(root / "hf_trained"), progress=False)
    img = root / "user.png"
    Image.fromarray(rng.integers(0, 255, (70, 98, 3), dtype=np.uint8)).save(img)
    return {"hf": hf, "mm": mm, "hf_trained": out, "image": str(img), "root": root}


def _chat(capsys, *args):
    rc = chat.main(list(args))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out.strip()


def test_mm_checkpoint_and_converted_hf_dir_answer_the_same(ckpts, capsys):
    q = ["--image", ckpts["image"], "--prompt", "What colour is the shape?", "--max-new-tokens", "12"]
    from_mm = _chat(capsys, "--load", ckpts["mm"], "--mm-model", DEFAULT_MODEL_JSON, "--tokenizer", ckpts["hf"], *q)
    from_hf = _chat(capsys, "--load", ckpts["hf_trained"], *q)
    assert from_mm and from_mm == from_hf
    # an earlier iteration is another model: another answer
    from_it3 = _chat(capsys, "--load", ckpts["mm"], "--iteration", "3", "--mm-model", DEFAULT_MODEL_JSON,
                     "--tokenizer", ckpts["hf"], *q)
    assert from_it3 != from_mm
    # sampling is seeded: same seed, same text
    s = ["--do-sample", "--temperature", "1.2", "--top-p", "0.9", "--seed", "4"]
    assert _chat(capsys, "--load", ckpts["hf_trained"], *q, *s) == _chat(capsys, "--load", ckpts["hf_trained"], *q, *s)


def test_evaluate_reports_per_type(ckpts, capsys):
    data = ckpts["root"] / "data"
    make_demo_dataset(str(data), seed=2, n_train=8, n_val=14, convert_llava=False)
    out = ckpts["root"] / "eval.json"
    rc = evaluate.main(["--load", ckpts["hf_trained"], "--data", str(data / "val.json"), "--output", str(out),
                        "--batch-size", "5", "--max-new-tokens", "3"])
    printed = capsys.readouterr().out
    assert rc == 0
    res = json.loads(out.read_text())
    types = json.loads((data / "val_types.json").read_text())
    assert set(res["accuracy"]) == set(types) | {"overall"}
    assert sum(res["counts"].values()) == 14 and len(res["records"]) == 14
    for rec, t in zip(res["records"], types):
        assert rec["type"] == t
        assert rec["correct"] == (evaluate.normalize_answer(rec["prediction"]) ==
                                  evaluate.normalize_answer(rec["reference"]))
    assert "colour" in printed and "overall" in printed
    # batching does not change answers (left padding is masked)
    one = chat.answer(*chat.build_from_args(_args(ckpts["hf_trained"])), [
        {"role": "user", "content": res["records"][0]["question"]}], res["records"][0]["images"], 3)
    assert one == res["records"][0]["prediction"]


def _args(load):
    import argparse
    p = argparse.ArgumentParser()
    chat.add_model_args(p)
    return p.parse_args(["--load", load])


def test_answer_normalization():
    assert evaluate.normalize_answer(" Red. ") == "red"
    assert evaluate.normalize_answer("red and blue") != "red"


def test_bad_load_arguments(ckpts, capsys, tmp_path):
    assert chat.main(["--load", ckpts["mm"], "--prompt", "hi"]) == 1
    assert "--mm-model" in capsys.readouterr().err
    assert chat.main(["--load", ckpts["mm"], "--mm-model", DEFAULT_MODEL_JSON, "--prompt", "hi"]) == 1
    assert "--tokenizer" in capsys.readouterr().err
    assert chat.main(["--load", str(tmp_path), "--prompt", "hi"]) == 1
    assert "neither an HF directory" in capsys.readouterr().err
    assert chat.main(["--load", ckpts["hf"], "--prompt", "<image><image>two?", "--image", ckpts["image"]]) == 1
    assert "2 <image> tag(s)" in capsys.readouterr().err
