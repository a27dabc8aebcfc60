"""safetensors through the `safetensors` library: what we write loads in the library and in
transformers, what transformers writes (bf16, fp32) loads in ours, and a row slice reads only
those rows."""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from helpers.hf_tiny import make_tiny_hf_checkpoint
from mindspeed_ms.checkpoint.hf_io import HFCheckpoint
from mindspeed_ms.checkpoint.safetensors_io import SafetensorsError, SafetensorsFile, save_safetensors


def test_written_files_load_in_the_library(tmp_path):
    rng = np.random.default_rng(0)
    t = {"w": rng.standard_normal((5, 3)).astype(ml_dtypes.bfloat16), "b": rng.standard_normal(7).astype(np.float32),
         "i": np.arange(6, dtype=np.int64).reshape(2, 3)[:, ::2], "s": np.array(2.5, np.float32)}
    save_safetensors(list(t.items()), tmp_path / "x.safetensors", metadata={"format": "pt", "vpp": 2})
    got = load_file(str(tmp_path / "x.safetensors"))
    for k, v in t.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert got[k].tobytes() == np.ascontiguousarray(v).tobytes(), k
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert f.metadata == {"format": "pt", "vpp": "2"}
    assert f.shape("w") == (5, 3) and f.dtype("w") == np.dtype(ml_dtypes.bfloat16) and f.nbytes("w") == 30
    assert f.dtype("s") == np.float32 and f.get("s").shape == ()
    with pytest.raises(SafetensorsError, match="cannot be stored"):
        save_safetensors({"c": np.zeros(2, np.complex64)}, tmp_path / "c.safetensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_files_written_by_transformers_load_in_ours_and_ours_in_transformers(tmp_path, dtype):
    from transformers import Qwen2VLForConditionalGeneration
    make_tiny_hf_checkpoint(tmp_path / "hf", preset="untied", seed=1)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "hf", torch_dtype=dtype)
    model.save_pretrained(tmp_path / "hf_t", safe_serialization=True)
    from safetensors.torch import load_file as torch_load_file
    ours = HFCheckpoint(tmp_path / "hf_t")
    sd = model.state_dict()
    written = {}
    for shard in set(ours.weight_map.values()):
        written.update(torch_load_file(str(tmp_path / "hf_t" / shard)))
    assert set(ours.keys()) == set(written) and len(written) == len(sd)
    for k, t in written.items():
        ref = t.float().numpy()
        got = ours.get(k)
        assert got.dtype == (np.dtype(ml_dtypes.bfloat16) if dtype == torch.bfloat16 else np.float32), k
        np.testing.assert_array_equal(got.astype(np.float32), ref)   # same bits: no arithmetic here

    # ours -> transformers: rewrite every tensor with our writer, then load the directory
    for shard in set(ours.weight_map.values()):
        f = SafetensorsFile(tmp_path / "hf_t" / shard)
        save_safetensors([(k, f.get(k)) for k in f.keys()], tmp_path / "hf_t" / shard, metadata={"format": "pt"})
    again = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path / "hf_t", torch_dtype=dtype)
    for k, v in again.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_row_slice_reads_only_those_rows(tmp_path):
    """File-backed resident memory (RssFile) grows by the rows read, not by the tensor."""
    path = tmp_path / "big.safetensors"
    save_safetensors({"emb": np.ones((4096, 4096), np.float32)}, path)   # 64 MiB
    code = f"""
import json, sys
from mindspeed_ms.checkpoint.safetensors_io import SafetensorsFile
def rss_file():
    for line in open('/proc/self/status'):
        if line.startswith('RssFile:'):
            return int(line.split()[1]) * 1024
f = SafetensorsFile({str(path)!r})
a = rss_file(); rows = f.get_rows('emb', 100, 116); b = rss_file()
full = f.get('emb'); c = rss_file()
print(json.dumps({{"rows": b - a, "full": c - b, "shape": list(rows.shape), "sum": float(rows.sum())}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["shape"] == [16, 4096] and m["sum"] == 16 * 4096
    assert m["rows"] < 8 << 20, m                  # 256 KiB of rows (+ readahead), not 64 MiB
    assert m["full"] >= 48 << 20, m                # the whole tensor does touch the file


def test_corrupt_files_name_the_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SafetensorsError, match="bad.safetensors"):
        SafetensorsFile(p)
    with pytest.raises(SafetensorsError, match="does not exist"):
        SafetensorsFile(tmp_path / "missing.safetensors")
