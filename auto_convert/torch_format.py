"""The `torch.save` file format (zip + pickle) read and written with numpy alone.

Layout of a file written by `torch.save` (the "zipfile" serialization, torch >= 1.6):

    <prefix>/data.pkl        pickle (protocol 2) of the object; tensors are
                             torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
                             requires_grad, OrderedDict()) and each storage is a persistent id
                             ("storage", torch.<Type>Storage, key, "cpu", numel)
    <prefix>/data/<key>      raw little-endian bytes of storage <key> (stored, 64-byte aligned)
    <prefix>/byteorder       "little"
    <prefix>/version         "3"

Reading is safe by construction: `load` unpickles with an allow-list of globals (the tensor
rebuild functions, storage types, dtypes, OrderedDict, basic containers, argparse.Namespace and the
numpy array reconstructors that Megatron's RNG state uses) and refuses any other global with an
error naming it, so loading a checkpoint never runs code from it. Tensors come back as numpy arrays
(bf16 as `ml_dtypes.bfloat16`); uncompressed storages are memory-mapped copy-on-write, so a large
file is read only where it is touched.

Writing emits the pickle opcodes directly (there is no torch to import `_rebuild_tensor_v2` from);
the files load in real `torch.load(..., weights_only=True)`.
"""
import argparse
import collections
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib

import ml_dtypes
import numpy as np

# torch storage class name <-> numpy dtype
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16), "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"), "ComplexDoubleStorage": np.dtype("<c16"),
    "Float8_e4m3fnStorage": np.dtype(ml_dtypes.float8_e4m3fn), "Float8_e5m2Storage": np.dtype(ml_dtypes.float8_e5m2),
    "UInt16Storage": np.dtype("<u2"), "UInt32Storage": np.dtype("<u4"), "UInt64Storage": np.dtype("<u8"),
    "UntypedStorage": np.dtype("u1"),
}
_DTYPE_STORAGE = {v: k for k, v in _STORAGE_DTYPES.items() if k != "UntypedStorage"}


def standard_bf16(a: np.ndarray) -> np.ndarray:
    """MindSpore's `Tensor.asnumpy()` gives bf16 arrays a numpy dtype of its own (same bits, not
    `ml_dtypes.bfloat16`); view them as the standard one so every writer knows the dtype."""
    if a.dtype.name == "bfloat16" and a.dtype != _STORAGE_DTYPES["BFloat16Storage"]:
        return a.view(ml_dtypes.bfloat16)
    return a

# torch dtype objects (torch.float32 ...) that appear as plain values, e.g. in optimizer state.
_TORCH_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
                 "bool", "complex64", "complex128", "float", "double", "half", "long", "int")


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The file asks the unpickler for a global outside the allow-list; nothing was executed.
    Also a ValueError: every command that reports bad input files as `error: ...` catches it."""


class TorchFormatError(ValueError):
    """The file is not a readable torch zip checkpoint (message names the file and the problem)."""


class TorchDtype(str):
    """A torch dtype value (e.g. torch.bfloat16) read from / written to a checkpoint, kept by name."""

    def __repr__(self):
        return f"torch.{str(self)}"


class _StorageRef:
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _StorageType:
    """Stand-in for a torch.<X>Storage class named in a persistent id."""

    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


def _codecs_encode(obj, encoding="utf-8"):
    # protocol 2 pickles bytes as _codecs.encode(str, "latin1")
    return obj.encode(encoding)


def _np_reconstruct(cls, shape, typecode):
    if cls is not np.ndarray:
        raise UnsafePickleError("numpy _reconstruct of a class other than numpy.ndarray is refused")
    return np.ndarray.__new__(np.ndarray, shape, typecode)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("numpy scalar of an object dtype is refused")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _np_dtype(name, align=False, copy=False):
    dt = np.dtype(name)
    if dt.hasobject:
        raise UnsafePickleError("numpy object dtype is refused (it could hold arbitrary Python objects)")
    return dt


class _SafeUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, so that BUILD (the one opcode that sets state on an object) can be
    policed as well as the globals. data.pkl holds only the structure; tensor bytes never pass here."""

    def __init__(self, fp, load_storage, where):
        super().__init__(fp)
        self._load_storage = load_storage
        self._where = where

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return TorchDtype(name)
        if module == "torch" and name == "Size":
            return tuple
        if full == "collections.OrderedDict":
            return _ordered_dict
        if full in ("builtins.set", "__builtin__.set"):
            return set
        if full in ("builtins.frozenset", "__builtin__.frozenset"):
            return frozenset
        if full in ("builtins.complex", "__builtin__.complex"):
            return complex
        if full == "_codecs.encode":
            return _codecs_encode
        if full == "argparse.Namespace":
            return argparse.Namespace  # a plain attribute bag (Megatron stores its args as one)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _np_reconstruct
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _np_scalar
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _np_dtype
        raise UnsafePickleError(
            f"{self._where}: refusing to load global '{full}': it is not on the allow-list of tensor and "
            f"container types, and loading it could run code. Nothing was executed. If you trust this "
            f"file, convert it with torch itself.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self._where}: unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        return self._load_storage(_StorageRef(str(key), stype.dtype, int(numel)))

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray or (isinstance(inst, np.dtype) and not inst.hasobject):
            inst.__setstate__(state)
            if (inst if isinstance(inst, np.dtype) else inst.dtype).hasobject:
                raise UnsafePickleError(f"{self._where}: numpy object dtype refused")
        elif type(inst) is argparse.Namespace and isinstance(state, dict) and all(isinstance(k, str) for k in state):
            inst.__dict__.update(state)
        else:
            raise UnsafePickleError(f"{self._where}: refusing to set state on a {type(inst).__name__} object")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    if not isinstance(storage, np.ndarray):
        raise UnsafePickleError("tensor rebuild without a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    count = int(np.prod(size, dtype=np.int64))
    if count == 0:
        return np.zeros(size, storage.dtype)
    last = int(storage_offset) + sum((s - 1) * st for s, st in zip(size, stride))
    if storage_offset < 0 or last >= storage.size or min(stride, default=0) < 0:
        raise TorchFormatError(f"tensor view (offset {storage_offset}, size {size}, stride {stride}) "
                               f"exceeds its storage of {storage.size} elements")
    contiguous = tuple(int(np.prod(size[i + 1:], dtype=np.int64)) for i in range(len(size)))
    flat = storage[storage_offset:]
    if all(st == c for st, c, s in zip(stride, contiguous, size) if s > 1):
        return flat[:count].reshape(size)  # a view: tensors sharing a storage share memory here too
    isz = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat, size, tuple(s * isz for s in stride), writeable=False)
    return np.array(view)  # strided views become compact copies (numpy views with odd strides are fragile)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _archive_prefix(zf, where):
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        raise TorchFormatError(f"{where} is a zip file without <name>/data.pkl: not a torch.save checkpoint")
    return pkl[0][: -len("data.pkl")]


def _data_offset(fp, info):
    """Absolute offset of a stored member's bytes (so it can be memory-mapped)."""
    fp.seek(info.header_offset)
    head = fp.read(30)
    if head[:4] != b"PK\x03\x04":
        raise TorchFormatError("corrupt zip local header")
    n, m = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + n + m


_CRC_CHUNK = 1 << 24


def _check_crc(path, offset, info, where, name):
    """The zip CRC-32 of a memory-mapped member (zipfile checks it only when it reads the bytes
    itself): a bit flip on disk would otherwise load as a wrong weight. Read in chunks through a
    read-only map, so the check costs page cache, not process memory."""
    if info.file_size == 0:
        return
    crc = 0
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(info.file_size,))
    try:
        for i in range(0, info.file_size, _CRC_CHUNK):
            crc = zlib.crc32(mm[i:i + _CRC_CHUNK], crc)
    finally:
        del mm
    if crc != info.CRC:
        raise TorchFormatError(f"{where} is corrupt: storage {name} fails its zip CRC-32 check (recorded "
                               f"{info.CRC:08x}, computed {crc:08x}); the file was damaged on disk or in a copy: "
                               f"restore or re-create it")


def load(path, mmap=True, verify=True):
    """Load a `torch.save` file into numpy / Python objects, refusing any non-allow-listed global.

    `path`: a file path or a binary file object. With `mmap` (paths only), storages are memory-mapped
    copy-on-write: arrays are writable, the file is never modified, untouched tensors cost nothing
    beyond the CRC check of `verify` (one sequential read; zipfile checks the other paths itself)."""
    where = str(path) if isinstance(path, (str, os.PathLike)) else "<buffer>"
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise TorchFormatError(f"checkpoint file {path} does not exist")
    if not zipfile.is_zipfile(path):
        with (open(path, "rb") if isinstance(path, (str, os.PathLike)) else _rewind(path)) as f:
            magic = f.read(2)
        if magic[:1] == b"\x80":
            raise TorchFormatError(f"{where} is a legacy (pre-1.6, non-zip) torch file; re-save it with a "
                                   f"recent torch, which writes the zip format")
        raise TorchFormatError(f"{where} is not a torch.save zip checkpoint (or it is truncated)")
    if not isinstance(path, (str, os.PathLike)):
        path.seek(0)
    with zipfile.ZipFile(path) as zf:
        prefix = _archive_prefix(zf, where)
        names = set(zf.namelist())
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise TorchFormatError(f"{where} was written on a big-endian machine; re-save it on little-endian")
        storages = {}

        def load_storage(ref):
            if ref.key in storages:
                return storages[ref.key]
            name = f"{prefix}data/{ref.key}"
            if name not in names:
                raise TorchFormatError(f"{where} lacks storage record {name} (file truncated or corrupt)")
            info = zf.getinfo(name)
            want = ref.numel * ref.dtype.itemsize
            if info.file_size < want:
                raise TorchFormatError(f"{where}: storage {name} holds {info.file_size} bytes, needs {want}")
            if ref.numel == 0:
                arr = np.zeros(0, ref.dtype)
            elif mmap and isinstance(path, (str, os.PathLike)) and info.compress_type == zipfile.ZIP_STORED:
                off = _data_offset(zf.fp, info)
                arr = np.memmap(path, dtype=ref.dtype, mode="c", offset=off, shape=(ref.numel,)).view(np.ndarray)
                if verify:
                    _check_crc(path, off, info, where, name)
            else:
                buf = bytearray(zf.read(name)[:want])
                arr = np.frombuffer(buf, dtype=ref.dtype)
            storages[ref.key] = arr
            return arr

        try:
            with zf.open(prefix + "data.pkl") as f:
                return _SafeUnpickler(io.BytesIO(f.read()), load_storage, where).load()
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise TorchFormatError(f"{where} is corrupt: {e}") from None


class _rewind:
    def __init__(self, f):
        self.f = f
        self.pos = f.tell()

    def __enter__(self):
        return self.f

    def __exit__(self, *a):
        self.f.seek(self.pos)


# ---- writer ---------------------------------------------------------------------------------------

class _PickleWriter:
    """Protocol-2 pickle emitter for the types torch checkpoints hold (no imports of torch needed)."""

    def __init__(self, where):
        self.out = io.BytesIO()
        self.where = where
        self.storages = []          # (key, root array)
        self._root_keys = {}        # id(array owning its memory) -> storage key

    def op(self, b):
        self.out.write(b)

    def global_(self, module, name):
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def str_(self, s):
        b = s.encode("utf-8")
        self.op(b"X" + struct.pack("<I", len(b)) + b)

    def int_(self, v):
        if 0 <= v < 256:
            self.op(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            self.op(b"M" + struct.pack("<H", v))
        elif -2 ** 31 <= v < 2 ** 31:
            self.op(b"J" + struct.pack("<i", v))
        else:
            enc = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.op(b"\x8a" + bytes([len(enc)]) + enc)

    def tuple_(self, items, path):
        if not items:
            self.op(b")")
            return
        self.op(b"(")
        for i, x in enumerate(items):
            self.value(x, f"{path}[{i}]")
        self.op(b"t")

    def value(self, v, path):
        if v is None:
            self.op(b"N")
        elif v is True:
            self.op(b"\x88")
        elif v is False:
            self.op(b"\x89")
        elif isinstance(v, TorchDtype):
            self.global_("torch", str(v))
        elif isinstance(v, str):
            self.str_(v)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, np.bool_):
            self.int_(int(v))
        elif isinstance(v, (float, np.floating)):
            self.op(b"G" + struct.pack(">d", float(v)))
        elif isinstance(v, np.bool_):
            self.value(bool(v), path)
        elif isinstance(v, (bytes, bytearray)):
            self.global_("_codecs", "encode")
            self.op(b"(")
            self.str_(bytes(v).decode("latin1"))
            self.str_("latin1")
            self.op(b"tR")
        elif isinstance(v, np.ndarray):
            self.tensor(v, path)
        elif isinstance(v, dict):
            if isinstance(v, collections.OrderedDict):
                self.global_("collections", "OrderedDict")
                self.op(b")R")
            else:
                self.op(b"}")
            if v:
                self.op(b"(")
                for k, x in v.items():
                    if not isinstance(k, (str, int)):
                        raise TypeError(f"{self.where}: key {k!r} at {path} must be str or int")
                    self.value(k, path)
                    self.value(x, f"{path}.{k}" if path else str(k))
                self.op(b"u")
        elif isinstance(v, list):
            self.op(b"]")
            if v:
                self.op(b"(")
                for i, x in enumerate(v):
                    self.value(x, f"{path}[{i}]")
                self.op(b"e")
        elif isinstance(v, tuple):
            self.tuple_(v, path)
        else:
            raise TypeError(f"{self.where}: cannot store {type(v).__name__} at '{path}' in a torch checkpoint "
                            f"(supported: numpy arrays, dict, list, tuple, str, int, float, bool, None, bytes)")

    def register_roots(self, obj):
        """Arrays that own their memory get a storage each up front, so that views of them anywhere
        in `obj` (before or after them) share it, as torch views of one tensor do."""
        if isinstance(obj, np.ndarray):
            if (not isinstance(obj.base, np.ndarray) and id(obj) not in self._root_keys
                    and obj.flags.c_contiguous and obj.dtype in _DTYPE_STORAGE):
                key = str(len(self.storages))
                self.storages.append((key, obj))
                self._root_keys[id(obj)] = key
        elif isinstance(obj, dict):
            for v in obj.values():
                self.register_roots(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                self.register_roots(v)

    def tensor(self, a, path):
        a = standard_bf16(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt not in _DTYPE_STORAGE:
            raise TypeError(f"{self.where}: array at '{path}' has dtype {a.dtype}, which torch cannot store")
        root = a
        while isinstance(root.base, np.ndarray):
            root = root.base
        isz = a.dtype.itemsize
        key = self._root_keys.get(id(root))
        offset = None
        if key is not None and root.dtype == a.dtype:
            delta = a.__array_interface__["data"][0] - root.__array_interface__["data"][0]
            if delta >= 0 and delta % isz == 0 and all(s >= 0 and s % isz == 0 for s in a.strides):
                offset, stride, numel = delta // isz, tuple(s // isz for s in a.strides), root.size
        if offset is None:
            # Not a view of a saved array: store just its elements, compactly (a TP slice of a big
            # merged tensor must not drag the whole tensor into every rank's file).
            base = np.ascontiguousarray(a).astype(dt, copy=False)
            key = str(len(self.storages))
            self.storages.append((key, base))
            offset, numel = 0, base.size
            stride = tuple(int(np.prod(a.shape[i + 1:], dtype=np.int64)) for i in range(a.ndim))
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(b"(")
        self.op(b"(")  # persistent id ("storage", torch.XStorage, key, "cpu", numel)
        self.str_("storage")
        self.global_("torch", _DTYPE_STORAGE[dt])
        self.str_(key)
        self.str_("cpu")
        self.int_(int(numel))
        self.op(b"tQ")
        self.int_(int(offset))
        self.tuple_(tuple(int(s) for s in a.shape), path)
        self.tuple_(tuple(int(s) for s in stride), path)
        self.op(b"\x89")  # requires_grad False
        self.global_("collections", "OrderedDict")  # backward hooks: always empty
        self.op(b")R")
        self.op(b"tR")


def save(obj, path, archive_name=None):
    """Write `obj` (nested dict/list/tuple of numpy arrays and plain values) as a torch.save file.

    Written to `path` directly; callers wanting atomicity write to a temporary name and rename."""
    where = str(path)
    w = _PickleWriter(where)
    w.register_roots(obj)
    w.op(b"\x80\x02")
    w.value(obj, "")
    w.op(b".")
    if archive_name is None:
        archive_name = os.path.splitext(os.path.basename(where))[0] or "archive"
    _write_zip(path, archive_name, w.out.getvalue(), w.storages)


def _aligned_extra(offset_after_name, zip64):
    """Extra-field padding so that the member's data starts on a 64-byte boundary (as torch does)."""
    base = offset_after_name + (20 if zip64 else 0)
    pad = (-(base + 4)) % 64
    return b"FB" + struct.pack("<H", pad) + b"Z" * pad


def _write_zip(path, prefix, pkl, storages):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        def record(name, data_len, chunks):
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = data_len
            zip64 = data_len * 1.05 > zipfile.ZIP64_LIMIT
            info.extra = _aligned_extra(zf.fp.tell() + 30 + len(info.filename.encode()), zip64)
            with zf.open(info, "w", force_zip64=zip64) as f:
                for c in chunks:
                    f.write(c)

        record("data.pkl", len(pkl), [pkl])
        record(".format_version", 1, [b"1"])
        record(".storage_alignment", 2, [b"64"])
        record("byteorder", 6, [b"little"])
        for key, arr in storages:
            flat = np.ascontiguousarray(arr).reshape(-1)
            if flat.dtype.byteorder == ">":
                flat = flat.astype(flat.dtype.newbyteorder("<"))
            raw = flat.view(np.uint8)
            step = 64 << 20  # write big storages in pieces: no second full copy in memory
            record(f"data/{key}", raw.size, (raw[i:i + step] for i in range(0, raw.size, step)))
        record("version", 2, [b"3\n"])
        record(".data/version", 2, [b"3\n"])


def _describe(obj, prefix=""):
    """(name, dtype, shape) of every array in a loaded object, depth first."""
    if isinstance(obj, np.ndarray):
        yield prefix or "<tensor>", str(obj.dtype), tuple(obj.shape)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _describe(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _describe(v, f"{prefix}.{i}" if prefix else str(i))


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m auto_convert.torch_format",
        description="List the tensors of a torch.save file (a MindSpeed-MM model_optim_rng.pt, for instance) "
                    "without torch; the file is read with the safe unpickler, so nothing in it is executed.")
    p.add_argument("files", nargs="+", metavar="FILE.pt", help="torch.save files to list")
    a = p.parse_args(argv)
    for path in a.files:
        try:
            obj = load(path)
        except (TorchFormatError, UnsafePickleError, OSError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        rows = list(_describe(obj))
        print(f"{path}: {len(rows)} tensors, {sum(int(np.prod(s)) for _, _, s in rows):,} elements")
        for name, dtype, shape in rows:
            print(f"  {name}  {dtype}  {list(shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
