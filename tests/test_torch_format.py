"""torch.save files without torch: interop both ways with real torch, and a reader that never runs code."""
import argparse
import collections
import io
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from auto_convert import torch_format as tf

torch = pytest.importorskip("torch")

_NP_TO_TORCH = {np.float32: torch.float32, np.float16: torch.float16, np.float64: torch.float64,
                np.int64: torch.int64, np.int32: torch.int32, np.int16: torch.int16, np.int8: torch.int8,
                np.uint8: torch.uint8, np.bool_: torch.bool}


def to_np(t):
    """A torch tensor as numpy, bf16 through its bits (numpy has no bf16)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def rand(shape, dtype, rng):
    x = rng.standard_normal(shape) * 10
    return x.astype(dtype)


def test_written_files_load_in_real_torch_weights_only(tmp_path):
    rng = np.random.default_rng(0)
    base = rand((6, 8), np.float32, rng)
    sd = collections.OrderedDict()
    for dt in [np.float32, np.float16, np.float64, ml_dtypes.bfloat16, np.int64, np.int32, np.int8, np.uint8]:
        sd[f"t_{np.dtype(dt).name}"] = rand((3, 5), dt, rng)
    sd["mask"] = rng.standard_normal(7) > 0
    sd["scalar"] = np.array(2.5, np.float32)
    sd["empty"] = np.zeros((0, 3), np.float32)
    sd["base"] = base
    sd["transposed"] = base.T            # strided view of a saved array: shares its storage
    sd["row_slice"] = base[2:4]          # view with an offset
    sd["every_other"] = base[:, ::2]
    sd["unrelated_view"] = rand((10, 4), np.float32, rng)[3:5]   # root not saved: stored compactly
    obj = {"model": sd, "checkpoint_version": 3.0, "iteration": 10,
           "optimizer": {"param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0, 1]}],
                         "state": {0: {"step": 3, "exp_avg": rand((3,), np.float32, rng)}}},
           "note": "ok", "raw": b"\x00\xff", "flag": None, "big": 2 ** 40, "neg": -7,
           "dtype": tf.TorchDtype("bfloat16")}
    path = tmp_path / "model_optim_rng.pt"
    tf.save(obj, path)
    got = torch.load(path, weights_only=True)
    for k, v in sd.items():
        t = got["model"][k]
        assert tuple(t.shape) == v.shape, k
        assert to_np(t).tobytes() == np.ascontiguousarray(v).tobytes(), k
        if v.dtype == ml_dtypes.bfloat16:
            assert t.dtype == torch.bfloat16
        else:
            assert t.dtype == _NP_TO_TORCH[v.dtype.type], k
    m = got["model"]
    assert m["transposed"].untyped_storage().data_ptr() == m["base"].untyped_storage().data_ptr()
    assert m["row_slice"].storage_offset() == 16
    assert m["unrelated_view"].untyped_storage().nbytes() == 2 * 4 * 4
    assert isinstance(m, collections.OrderedDict)
    assert got["checkpoint_version"] == 3.0 and got["iteration"] == 10 and got["note"] == "ok"
    assert got["raw"] == b"\x00\xff" and got["flag"] is None and got["big"] == 2 ** 40 and got["neg"] == -7
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], torch.from_numpy(obj["optimizer"]["state"][0]["exp_avg"]))
    assert got["dtype"] is torch.bfloat16
    # our own reader gives the same back
    back = tf.load(path)
    for k, v in sd.items():
        assert back["model"][k].dtype == v.dtype and np.ascontiguousarray(back["model"][k]).tobytes() == np.ascontiguousarray(v).tobytes()
    assert back["dtype"] == "bfloat16" and back["optimizer"]["param_groups"][0]["lr"] == 1e-4
    # storages start on 64-byte boundaries, as torch writes them (needed for torch.load(mmap=True))
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for info in zf.infolist():
            if "/data/" in info.filename:
                assert tf._data_offset(f, info) % 64 == 0
    assert to_np(torch.load(path, weights_only=True, mmap=True)["model"]["base"]).tobytes() == base.tobytes()


def test_real_torch_save_files_load_here(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    sd = collections.OrderedDict(
        w=torch.randn(4, 3, generator=g).to(torch.bfloat16), h=torch.randn(5, generator=g).half(),
        d=torch.randn(2, 2, generator=g).double(), i=torch.arange(7), b=torch.tensor([True, False, True]),
        i8=torch.arange(-3, 3, dtype=torch.int8), u8=torch.arange(4, dtype=torch.uint8),
        base=base, t=base.t(), sl=base[1:3], strided=base[::2, 1::3], exp=base[0:1].expand(3, 8),
        param=torch.nn.Parameter(torch.randn(2, 3, generator=g)), scalar=torch.tensor(4.0))
    ns = argparse.Namespace(tensor_model_parallel_size=2, lr=1e-4, model="qwen2vl")
    obj = {"model": sd, "checkpoint_version": 3.0, "iteration": 5, "args": ns, "size": torch.Size([2, 3]),
           "rng_state": [{"random_rng_state": ("x", 1), "np_rng_state": np.random.RandomState(0).get_state(),
                          "torch_rng_state": torch.get_rng_state()}],
           "opt": {"step": torch.tensor(3), "dtype": torch.float32, "set": {1, 2}}}
    path = tmp_path / "real.pt"
    torch.save(obj, path)
    got = tf.load(path)
    for k, t in sd.items():
        a = got["model"][k]
        assert a.shape == tuple(t.shape), k
        assert np.ascontiguousarray(a).tobytes() == to_np(t).tobytes(), k
    assert got["model"]["w"].dtype == ml_dtypes.bfloat16
    assert np.shares_memory(got["model"]["base"], got["model"]["sl"])  # shared storage stays shared
    assert isinstance(got["model"], collections.OrderedDict) and list(got["model"]) == list(sd)
    assert got["args"].tensor_model_parallel_size == 2 and got["args"].model == "qwen2vl"
    assert got["size"] == (2, 3) and got["iteration"] == 5 and got["opt"]["set"] == {1, 2}
    assert got["opt"]["dtype"] == "float32"
    np_state = got["rng_state"][0]["np_rng_state"]
    ref = np.random.RandomState(0).get_state()
    assert np_state[0] == ref[0] and np.array_equal(np_state[1], ref[1])
    assert got["rng_state"][0]["torch_rng_state"].dtype == np.uint8
    # no mmap, from a file object
    with open(path, "rb") as f:
        got2 = tf.load(io.BytesIO(f.read()), mmap=False)
    assert got2["model"]["w"].tobytes() == got["model"]["w"].tobytes()
    # arrays are writable (copy-on-write), the file is not touched
    before = open(path, "rb").read()
    got["model"]["base"][0, 0] = 123.0
    assert open(path, "rb").read() == before


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Evil(marker)}, path)
    with pytest.raises(tf.UnsafePickleError, match=r"'(posix|os|nt)\.system'"):
        tf.load(path)
    assert not marker.exists()
    # the same file would run the command under plain pickle: the test's attack is real
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def _zip_with_pickle(path, pkl):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen"),
                                         ("builtins", "getattr"), ("torch", "load"), ("numpy", "load"),
                                         ("torch._utils", "_rebuild_from_type_v2")])
def test_any_other_global_is_refused(tmp_path, module, name):
    pkl = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nX\x03\x00\x00\x001+1\x85R."
    _zip_with_pickle(tmp_path / "g.pt", pkl)
    with pytest.raises(tf.UnsafePickleError, match=f"'{module}.{name}'"):
        tf.load(tmp_path / "g.pt")


def test_build_on_allowed_class_is_refused(tmp_path):
    # BUILD with (None, slotstate) would setattr on the Namespace *class* itself: refused.
    pkl = (b"\x80\x02cargparse\nNamespace\nN}X\x08\x00\x00\x00__init__cbuiltins\nset\nsb" + b".")
    _zip_with_pickle(tmp_path / "b.pt", pkl)
    with pytest.raises(tf.UnsafePickleError):
        tf.load(tmp_path / "b.pt")
    assert argparse.Namespace.__init__ is not set


def test_bad_files(tmp_path):
    with pytest.raises(tf.TorchFormatError, match="does not exist"):
        tf.load(tmp_path / "nope.pt")
    p = tmp_path / "m.pt"
    tf.save({"model": {"w": np.ones((64, 64), np.float32)}}, p)
    data = p.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(tf.TorchFormatError, match="truncated|corrupt"):
        tf.load(tmp_path / "t.pt")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(tf.TorchFormatError, match="legacy"):
        tf.load(tmp_path / "legacy.pt")
    with pytest.raises(TypeError, match="object at 'x'"):
        tf.save({"x": object()}, tmp_path / "o.pt")


def test_mindspore_bf16_arrays_are_written_as_bf16(tmp_path):
    """MindSpore's asnumpy() bf16 dtype is not ml_dtypes' (same bits): both writers accept it."""
    import ml_dtypes
    import mindspore as ms

    from mindspeed_ms.checkpoint.safetensors_io import read_safetensors, save_safetensors

    values = np.array([1.5, -2.25, 3.0e-3], np.float32)
    ms_bf16 = ms.Tensor(values, ms.bfloat16).asnumpy()
    assert ms_bf16.dtype != np.dtype(ml_dtypes.bfloat16)
    tf.save({"w": ms_bf16}, str(tmp_path / "a.pt"))
    back = torch.load(str(tmp_path / "a.pt"), weights_only=True)["w"]
    assert back.dtype == torch.bfloat16
    np.testing.assert_array_equal(back.float().numpy(), values.astype(ml_dtypes.bfloat16).astype(np.float32))
    save_safetensors({"w": ms_bf16}, str(tmp_path / "a.safetensors"))
    got = read_safetensors(str(tmp_path / "a.safetensors"))["w"]
    assert got.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.astype(np.float32), values.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_command_lists_tensors_and_names_bad_files(tmp_path):
    import subprocess
    import sys
    tf.save({"model": {"w": np.ones((2, 3), np.float32)}, "iteration": 3}, str(tmp_path / "a.pt"))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "auto_convert.torch_format", str(tmp_path / "a.pt")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "1 tensors, 6 elements" in r.stdout and "model.w  float32  [2, 3]" in r.stdout
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    r = subprocess.run([sys.executable, "-m", "auto_convert.torch_format", str(tmp_path / "bad.pt")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "bad.pt" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "auto_convert.torch_format", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "FILE.pt" in r.stdout
