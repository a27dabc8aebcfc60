"""safetensors files through the `safetensors` library, numpy only (bf16 as ml_dtypes.bfloat16).

The library parses and validates the header, reads tensors (or only the rows of a slice) and writes
straight from the arrays' buffers. What this module adds: errors that name the file, MindSpore's
bf16 arrays accepted as ml_dtypes', and a writer that takes a list of (name, array) pairs.
"""
import os

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

# The library's dtype names (get_dtype) and the numpy dtypes it reads them as.
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?", "BF16": ml_dtypes.bfloat16,
           "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
_DTYPES = {k: np.dtype(v) for k, v in _DTYPES.items()}
_STORABLE = set(_DTYPES.values())


class SafetensorsError(ValueError):
    """A safetensors file is unreadable; the message names the file and what is wrong."""


def _storable(a):
    a = np.asarray(a)
    if a.dtype.name == "bfloat16" and a.dtype != np.dtype(ml_dtypes.bfloat16):
        a = a.view(ml_dtypes.bfloat16)   # MindSpore's asnumpy() bf16 has the same bits as ml_dtypes'
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype not in _STORABLE:
        raise SafetensorsError(f"dtype {a.dtype} cannot be stored in a safetensors file")
    # the library writes from the buffer pointer: only a non-contiguous view needs a copy
    return a if a.flags.c_contiguous else a.copy(order="C")   # (ascontiguousarray makes 0-d 1-d)


def _explain(path, err):
    msg = str(err)
    low = msg.lower()
    if any(k in low for k in ("incomplete", "not fully covered", "too small", "too large", "invalid offset",
                              "invalidoffset", "headertoo", "eof")):
        return f"{path} is truncated or not a safetensors file ({msg}): re-download or re-copy the file"
    return f"{path} is not a readable safetensors file: {msg}"


class SafetensorsFile:
    """A lazily read safetensors file: `keys()`, `shape(name)`, `dtype(name)`, `get(name)`,
    `get_rows(name, start, stop)` (reads only those rows)."""

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise SafetensorsError(f"safetensors file {self.path} does not exist")
        try:
            self._f = safe_open(self.path, framework="numpy")
            self._keys = list(self._f.keys())
            self.metadata = self._f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise SafetensorsError(_explain(self.path, e)) from None

    def keys(self):
        return list(self._keys)

    def __contains__(self, name):
        return name in self._keys

    def _slice(self, name):
        if name not in self._keys:
            raise KeyError(f"tensor {name} is not in {self.path}")
        return self._f.get_slice(name)

    def shape(self, name):
        return tuple(int(s) for s in self._slice(name).get_shape())

    def dtype(self, name):
        return _DTYPES[self._slice(name).get_dtype()]

    def nbytes(self, name):
        return int(np.prod(self.shape(name), dtype=np.int64)) * self.dtype(name).itemsize

    def get(self, name) -> np.ndarray:
        """The whole tensor, read now into its own array."""
        self._slice(name)
        try:
            return self._f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise SafetensorsError(f"{self.path}: tensor {name}: {e}") from None

    def get_rows(self, name, start, stop) -> np.ndarray:
        """Rows start:stop of the first axis; only those bytes are read."""
        try:
            return self._slice(name)[start:stop]
        except (SafetensorError, OSError) as e:
            raise SafetensorsError(f"{self.path}: tensor {name}: {e}") from None


def read_safetensors(path) -> dict:
    f = SafetensorsFile(path)
    return {k: f.get(k) for k in f.keys()}


def save_safetensors(tensors, path, metadata=None):
    """Write `tensors` (a dict or a list of (name, array)) to `path`; arrays may be memory-mapped."""
    items = tensors.items() if isinstance(tensors, dict) else tensors
    arrays = {str(name): _storable(arr) for name, arr in items}
    meta = {str(k): str(v) for k, v in metadata.items()} if metadata else None
    save_file(arrays, str(path), metadata=meta)
