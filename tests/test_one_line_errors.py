"""User mistakes give one `error: ...` line naming the file / flag / sample, exit != 0, no traceback:
a decompression-bomb image (training and chat), a malicious pickle (training and chat), vocab_size
below the token ids, a dataset cache made stale by changed images, weak messages made precise."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY_MODEL = os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "model_tiny.json")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["GLOG_v"] = "3"
    return env


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Tiny HF checkpoint (real tokenizer) -> hf_to_mm, and a small demo dataset."""
    w = tmp_path_factory.mktemp("errs")
    py, env = sys.executable, _env()
    for cmd in ([py, "-m", "mindspeed_ms.tools.make_tiny_checkpoint", f"{w}/hf"],
                [py, "-m", "mindspeed_ms.tools.make_demo_dataset", f"{w}/data", "--train", "8", "--val", "7",
                 "--no-llava"],
                [py, "-m", "mindspeed_ms.checkpoint.cli", "Qwen2VLConverter", "hf_to_mm", "--cfg.mm_dir", f"{w}/mm",
                 "--cfg.hf_config.hf_dir", f"{w}/hf", "--cfg.parallel_config.llm_pp_layers", "[[2]]",
                 "--cfg.parallel_config.vit_pp_layers", "[[2]]", "--cfg.progress", "false"]):
        subprocess.run(cmd, check=True, env=env, cwd=str(w), capture_output=True, timeout=300)
    return w


def data_json(work, tmp_path, data_dir=None):
    """data_tiny.json pointed at a copy-free dataset dir with its own cache (no reuse between tests)."""
    d = data_dir or f"{work}/data"
    text = open(os.path.join(ROOT, "examples", "mindspore", "qwen2vl", "data_tiny.json")).read()
    text = text.replace("./ckpt/hf_path/Qwen2-VL-tiny", f"{work}/hf").replace("./data/tiny_demo/cache_dir",
                                                                             f"{tmp_path}/cache")
    text = text.replace("./data/tiny_demo", d)
    p = tmp_path / "data.json"
    p.write_text(text)
    return str(p)


def train_main(argv, capfd):
    from mindspeed_ms.training.pretrain import main
    capfd.readouterr()
    rc = main(argv)
    err = capfd.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert rc != 0 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def chat_error(rc, capfd):
    err = capfd.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("chat: error:")]   # MindSpore logs warnings too
    assert rc != 0 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def flags(data, model=TINY_MODEL, extra=""):
    return (f"--micro-batch-size 2 --global-batch-size 2 --seq-length 256 --lr 1e-3 --train-iters 1 "
            f"--mm-data {data} --mm-model {model} {extra}").split()


def _evil_rank_file(path):
    """A torch-zip whose pickle calls os.system (never executed by our reader)."""
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/h22-pwned",))
    pkl = pickle.dumps({"model": {}, "x": Evil()}, protocol=2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")


@pytest.fixture
def evil_mm(work, tmp_path):
    d = tmp_path / "evil_mm"
    shutil.copytree(work / "mm", d)
    rank = d / "release" / "mp_rank_00" / "model_optim_rng.pt"
    _evil_rank_file(rank)
    return d, rank


def test_malicious_pickle_in_training_load(work, tmp_path, capfd, evil_mm):
    d, rank = evil_mm
    line = train_main(flags(data_json(work, tmp_path), extra=f"--load {d}"), capfd)
    assert line.startswith(f"error: --load {d}") and str(rank) in line and "refusing to load global" in line
    assert not os.path.exists("/tmp/h22-pwned")


def test_malicious_pickle_in_chat(work, capfd, evil_mm):
    from mindspeed_ms.inference.chat import main
    d, rank = evil_mm
    capfd.readouterr()
    rc = main(["--load", str(d), "--mm-model", TINY_MODEL, "--tokenizer", str(work / "hf"), "--prompt", "hi"])
    err = chat_error(rc, capfd)
    assert str(rank) in err and "refusing to load global" in err, err


def _bomb_dataset(work, tmp_path, monkeypatch):
    """The demo dataset with PIL's bomb limit lowered so that its small images count as bombs (a real
    20000 x 20000 image takes the same path: Image.open raises DecompressionBombError)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    return data_json(work, tmp_path)


def test_decompression_bomb_in_training(work, tmp_path, capfd, monkeypatch):
    data = _bomb_dataset(work, tmp_path, monkeypatch)
    line = train_main(flags(data), capfd)
    assert "sample 0" in line and "too large to open safely" in line and "train.json" in line and ".png" in line


def test_decompression_bomb_in_chat(work, tmp_path, capfd, monkeypatch):
    from mindspeed_ms.inference.chat import main
    img = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(img)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    capfd.readouterr()
    rc = main(["--load", str(work / "hf"), "--image", str(img), "--prompt", "what colour?", "--max-new-tokens", "1"])
    err = chat_error(rc, capfd)
    assert str(img) in err and "too large" in err, err


def test_vocab_size_below_token_ids(work, tmp_path, capfd):
    cfg = json.load(open(TINY_MODEL))
    cfg["text_decoder"]["vocab_size"] = 1000
    small = tmp_path / "small_vocab.json"
    small.write_text(json.dumps(cfg))
    line = train_main(flags(data_json(work, tmp_path), str(small)), capfd)
    assert str(small) in line and "vocab_size 1000" in line
    # with the special ids inside the table, the tokens of the data are still checked before compiling
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.data.dataset import build_datasets
    from mindspeed_ms.training.vocab_check import check_token_ids
    train, val = build_datasets(load_data_json(data_json(work, tmp_path)), 256)
    with pytest.raises(ValueError, match=r"--mm-data d\.json: the training set holds token id \d+ \(input_ids\), "
                                         r"but text_decoder.vocab_size in --mm-model m\.json is 151000"):
        check_token_ids((train, val), 151000, "d.json", "m.json")
    check_token_ids((train, val), 151936, "d.json", "m.json")


def test_stale_cache_after_images_changed(work, tmp_path, capfd):
    data_dir = tmp_path / "data"
    shutil.copytree(work / "data", data_dir, ignore=shutil.ignore_patterns("cache_dir"))
    data = data_json(work, tmp_path, str(data_dir))
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.data.dataset import build_datasets
    build_datasets(load_data_json(data), 256)          # preprocess into cache_dir
    for n in os.listdir(data_dir / "images"):          # every image now twice as large
        p = data_dir / "images" / n
        im = Image.open(p)
        im.resize((im.width * 2, im.height * 2)).save(p)
    line = train_main(flags(data, extra="--seed 3"), capfd)
    assert "sample" in line and "changed since preprocessing" in line and "overwrite_cache" in line


def test_missing_image_names_dataset_dir(work, tmp_path, capfd):
    rows = json.load(open(work / "data" / "train.json"))
    rows[1]["images"] = ["images/not_there.png"]
    d = tmp_path / "data"
    shutil.copytree(work / "data", d, ignore=shutil.ignore_patterns("cache_dir"))
    (d / "train.json").write_text(json.dumps(rows))
    line = train_main(flags(data_json(work, tmp_path, str(d))), capfd)
    assert "sample 1" in line and "images/not_there.png" in line and "dataset_dir" in line and str(d) in line


def test_val_dataset_error_names_val_dataset(work, tmp_path, capfd):
    data = data_json(work, tmp_path)
    text = open(data).read().replace(f"{work}/data/val.json", f"{tmp_path}/no_val.json")
    open(data, "w").write(text)
    line = train_main(flags(data), capfd)
    assert "no_val.json" in line and "basic_parameters.val_dataset" in line


def test_evaluate_batch_size_zero(work, capfd):
    from mindspeed_ms.inference.evaluate import main
    capfd.readouterr()
    rc = main(["--load", str(work / "hf"), "--data", str(work / "data" / "val.json"), "--batch-size", "0"])
    err = capfd.readouterr().err.strip()
    assert rc == 2 and err == "evaluate: error: --batch-size 0: give a positive number of samples"


def test_hf_to_mm_into_a_file(work, tmp_path, capfd):
    from mindspeed_ms.checkpoint import cli
    f = tmp_path / "mm_file"
    f.write_text("not a directory")
    capfd.readouterr()
    rc = cli.main(["Qwen2VLConverter", "hf_to_mm", "--cfg.mm_dir", str(f), "--cfg.hf_config.hf_dir",
                   str(work / "hf"), "--cfg.parallel_config.llm_pp_layers", "[[2]]",
                   "--cfg.parallel_config.vit_pp_layers", "[[2]]", "--cfg.progress", "false"])
    err = capfd.readouterr().err.strip()
    assert rc == 2 and err.startswith("mm-convert: error: --cfg.mm_dir") and "is a file" in err and "\n" not in err
    assert f.read_text() == "not a directory"


def test_empty_answer_is_kept_with_a_warning(work, tmp_path, caplog):
    import logging
    rows = json.load(open(work / "data" / "train.json"))
    rows[2]["messages"][-1]["content"] = ""
    d = tmp_path / "data"
    shutil.copytree(work / "data", d, ignore=shutil.ignore_patterns("cache_dir"))
    (d / "train.json").write_text(json.dumps(rows))
    from mindspeed_ms.config.data_config import load_data_json
    from mindspeed_ms.data import dataset as ds_mod
    ds_mod._empty_warned[0] = 0
    with caplog.at_level(logging.WARNING):
        train, _ = ds_mod.build_datasets(load_data_json(data_json(work, tmp_path, str(d))), 256)
    hits = [r.getMessage() for r in caplog.records if "empty assistant answer" in r.getMessage()]
    assert len(hits) == 1 and "train.json: sample 2 " in hits[0], hits
    assert len(train) == len(rows)                       # kept, as MindSpeed-MM keeps it
    labels = [t for t in train.rows[2]["labels"] if t != -100]
    turns = sum(m["role"] == "assistant" for m in rows[2]["messages"])
    assert labels.count(151645) == turns                 # the empty turn still trains its <|im_end|>
