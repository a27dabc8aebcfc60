"""Read and write the safetensors format with numpy alone (bf16 through ml_dtypes).

The `safetensors` package's numpy API has no bfloat16, and its torch API would pull torch into
the runtime; the format itself is tiny (8-byte little-endian header length, a JSON header, raw
little-endian tensor bytes), so we read it memory-mapped and write it tensor by tensor. That keeps a
conversion's peak memory near the largest tensor instead of the whole file.
"""
import json
import os
import struct

import ml_dtypes
import numpy as np

# safetensors dtype tag <-> numpy dtype (little-endian on disk).
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_TAGS = {v: k for k, v in _DTYPES.items()}

# A header larger than this is a corrupt file, not a real checkpoint (the format's own limit).
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file is unreadable; the message names the file and what is wrong."""


def dtype_tag(dtype) -> str:
    dt = np.dtype(dtype)
    if dt.name == "bfloat16":  # MindSpore's asnumpy() bf16 dtype has the same bits as ml_dtypes'
        dt = np.dtype(ml_dtypes.bfloat16)
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    if dt not in _TAGS:
        raise SafetensorsError(f"dtype {dt} cannot be stored in a safetensors file")
    return _TAGS[dt]


class SafetensorsFile:
    """A lazily read safetensors file: `keys()`, `shape(name)`, `dtype(name)`, `get(name)`.

    `get` returns a read-only memory-mapped view (no copy): only the pages touched are read.
    """

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise SafetensorsError(f"safetensors file {self.path} does not exist")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path} is truncated: {size} bytes, no header length")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise SafetensorsError(
                    f"{self.path} is truncated or not a safetensors file: header claims {n} bytes, file has {size}")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SafetensorsError(f"{self.path} has a corrupt JSON header: {e}") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._entries = {}
        data_len = size - self._data_start
        for name, info in header.items():
            tag = info.get("dtype")
            if tag not in _DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name} has unknown dtype {tag!r}")
            begin, end = info["data_offsets"]
            shape = tuple(int(s) for s in info["shape"])
            want = int(np.prod(shape, dtype=np.int64)) * _DTYPES[tag].itemsize
            if end - begin != want:
                raise SafetensorsError(
                    f"{self.path}: tensor {name} spans {end - begin} bytes but shape {shape} {tag} needs {want}")
            if end > data_len:
                raise SafetensorsError(
                    f"{self.path} is truncated: tensor {name} ends at byte {end} of the data section, "
                    f"which has only {data_len} bytes (re-download or re-copy the file)")
            self._entries[name] = (tag, shape, begin)

    def keys(self):
        return list(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def shape(self, name):
        return self._entries[name][1]

    def dtype(self, name):
        return _DTYPES[self._entries[name][0]]

    def nbytes(self, name):
        tag, shape, _ = self._entries[name]
        return int(np.prod(shape, dtype=np.int64)) * _DTYPES[tag].itemsize

    def get(self, name, copy=False) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(f"tensor {name} is not in {self.path}")
        tag, shape, begin = self._entries[name]
        dt = _DTYPES[tag]
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.zeros(shape, dt)
        arr = np.memmap(self.path, dtype=dt, mode="r", offset=self._data_start + begin, shape=(count,)).view(np.ndarray)
        arr = arr.reshape(shape)
        return np.array(arr) if copy else arr


def read_safetensors(path, copy=True) -> dict:
    f = SafetensorsFile(path)
    return {k: f.get(k, copy=copy) for k in f.keys()}


def save_safetensors(tensors, path, metadata=None):
    """Write `tensors` (a dict or a list of (name, array)) to `path`, one array at a time.

    Arrays may be memory-mapped views: each is made contiguous only while it is written."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    header = {}
    offset = 0
    for name, arr in items:
        a = np.asarray(arr)
        header[name] = {"dtype": dtype_tag(a.dtype), "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, arr in items:
            a = np.asarray(arr)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
