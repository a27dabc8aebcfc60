"""The two MindSpeed-MM dataset converters, end to end on tiny inputs."""
import importlib.util
import io
import json
import os

import pytest

from helpers.images import rgb, write_image

HERE = os.path.join(os.path.dirname(__file__), "..", "examples", "mindspore", "qwen2vl")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_llava_converter(tmp_path, capsys):
    conv = load("llava_instruct_2_mllm_demo_format")
    img_dir = tmp_path / "coco"
    img_dir.mkdir()
    write_image(str(img_dir / "1.jpg"), fmt="JPEG")
    recs = [{"id": "a", "image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                           {"from": "gpt", "value": "A."}]},
            {"id": "b", "image": "missing.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                                 {"from": "gpt", "value": "B"}]},
            {"id": "c", "conversations": [{"from": "human", "value": "text only"}, {"from": "gpt", "value": "C"}]}]
    src = tmp_path / "llava.json"
    src.write_text(json.dumps(recs))
    out = tmp_path / "out.json"
    args = ["--llava-json", str(src), "--image-dir", str(img_dir), "--output", str(out)]
    assert conv.main(args) == 0
    data = json.loads(out.read_text())
    assert data == [{"images": [os.path.join(str(img_dir), "1.jpg")],
                     "messages": [{"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A."}]},
                    {"images": [], "messages": [{"role": "user", "content": "text only"},
                                                {"role": "assistant", "content": "C"}]}]
    assert "1 skipped" in capsys.readouterr().out
    assert conv.main(args) == 1 and "already exists" in capsys.readouterr().err
    recs[2]["conversations"][0]["from"] = "robot"
    src.write_text(json.dumps(recs))
    assert conv.main(args + ["--overwrite"]) == 1
    assert "record 2 (id c): unknown role 'robot'" in capsys.readouterr().err


def test_rlhfv_converter(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    conv = load("rlhfv_2_sharegpt_demo_format")
    buf = io.BytesIO()
    rgb(40, 30).save(buf, format="JPEG")
    good = buf.getvalue()
    rows = [{"conversations": [{"from": "human", "value": "<image>Q1"}], "chosen": {"from": "gpt", "value": "good"},
             "rejected": {"from": "gpt", "value": "bad"}, "images": [{"bytes": good, "path": "x.jpg"}]},
            {"conversations": [{"from": "human", "value": "<image>Q2"}], "chosen": {"from": "gpt", "value": "g"},
             "rejected": {"from": "gpt", "value": "b"}, "images": [{"bytes": b"not an image", "path": "y.jpg"}]}]
    ds_dir = tmp_path / "rlhf-v"
    ds_dir.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(ds_dir / "train.parquet"))
    out = tmp_path / "rlhf-v.json"
    assert conv.main(["--dataset", str(ds_dir), "--image-folder", str(tmp_path / "imgs"), "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data) == 1 and data[0]["chosen"] == {"role": "assistant", "content": "good"}
    assert data[0]["messages"] == [{"role": "user", "content": "<image>Q1"}]
    assert os.path.isfile(data[0]["images"][0]) and not (tmp_path / "imgs" / "0001.jpg").exists()
    assert "skipping item 1: invalid image file" in capsys.readouterr().err
