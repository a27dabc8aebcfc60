"""A .pt with flipped bytes in a tensor is refused naming the file: by the reader (zip CRC on the
memory-mapped path), by training's --load, and by mm-convert; real torch files still load."""
import os

import numpy as np
import pytest

from auto_convert import torch_format as tf


def _flip(path, where):
    data = bytearray(open(path, "rb").read())
    data[where] ^= 0x40
    open(path, "wb").write(bytes(data))


def _weight_offset(path, values):
    raw = open(path, "rb").read()
    off = raw.find(values.tobytes())
    assert off > 0
    return off


def test_reader_refuses_flipped_tensor_bytes(tmp_path):
    w = np.arange(256, dtype=np.float32) / 7
    p = tmp_path / "m.pt"
    tf.save({"model": {"w": w}}, p)
    np.testing.assert_array_equal(tf.load(p)["model"]["w"], w)
    _flip(p, _weight_offset(p, w) + 4 * 100 + 3)
    with pytest.raises(tf.TorchFormatError, match=rf"{p} is corrupt: storage .*data/\d+ fails its zip CRC-32"):
        tf.load(p)
    with pytest.raises(tf.TorchFormatError, match="corrupt|CRC"):
        tf.load(p, mmap=False)                          # zipfile's own check on the read path
    bad = tf.load(p, verify=False)["model"]["w"]        # what used to load silently
    assert not np.array_equal(bad, w)


def test_real_torch_file_passes_the_check(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "t.pt"
    torch.save({"model": {"a": torch.randn(33, 7), "b": torch.arange(10)}}, p)
    out = tf.load(p)
    assert out["model"]["a"].shape == (33, 7) and list(out["model"]["b"]) == list(range(10))


def test_training_load_and_mm_convert_refuse(tmp_path, capsys):
    from mindspeed_ms.checkpoint.layout import PT_FILE
    from mindspeed_ms.training.checkpointing import CheckpointLoadError, load_checkpoint, save_checkpoint
    w = np.linspace(-1, 1, 512, dtype=np.float32)
    save = tmp_path / "save"
    save_checkpoint(str(save), 3, {"text_decoder.decoder.final_layernorm.weight": w}, "torch")
    rank_file = save / "iter_0000003" / "mp_rank_00" / PT_FILE
    _flip(rank_file, _weight_offset(rank_file, w) + 4 * 17)
    with pytest.raises(CheckpointLoadError, match=rf"{rank_file}.*CRC"):
        load_checkpoint(str(save))
    # mm-convert resplit reads the same way: one line naming the file, exit 2, nothing written
    from mindspeed_ms.checkpoint import cli
    capsys.readouterr()
    rc = cli.main(["Qwen2VLConverter", "resplit", "--cfg.source_dir", str(save), "--cfg.target_dir",
                   str(tmp_path / "out"), "--cfg.target_parallel_config.llm_pp_layers", "[0]",
                   "--cfg.target_parallel_config.vit_pp_layers", "[0]", "--cfg.progress", "false"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and str(rank_file) in err and "CRC" in err and "\n" not in err, err
    assert not os.path.exists(tmp_path / "out")
