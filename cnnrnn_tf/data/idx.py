"""Reading (and writing) IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header followed by the raw array::

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions
    then        one big-endian uint32 per dimension (its size)
    then        the elements, row-major, big-endian

MNIST image files are ``0x00000803`` (uint8, 3 dims: n, rows, cols) and label
files ``0x00000801`` (uint8, 1 dim: n). Files may be gzip-compressed (detected
from the content, not the name). Every problem raises
:class:`~cnnrnn_tf.errors.InputError` naming the file.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Optional, Tuple

import numpy as np

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import read_bytes

GZIP_MAGIC = b"\x1f\x8b"
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# IDX element type code -> big-endian numpy dtype.
_TYPE_CODES: Tuple[Tuple[int, str], ...] = (
    (0x08, ">u1"),
    (0x09, ">i1"),
    (0x0B, ">i2"),
    (0x0C, ">i4"),
    (0x0D, ">f4"),
    (0x0E, ">f8"),
)


def _dtype_for_code(code: int) -> Optional[np.dtype]:
    for known, dtype in _TYPE_CODES:
        if known == code:
            return np.dtype(dtype)
    return None


def _code_for_dtype(dtype: np.dtype) -> Optional[int]:
    for code, name in _TYPE_CODES:
        if np.dtype(name).newbyteorder("=") == np.dtype(dtype).newbyteorder("="):
            return code
    return None


def _read_bytes(path: str) -> bytes:
    """Reads a file, gunzipping it when it starts with the gzip magic."""
    path = os.fspath(path)
    data = read_bytes(path, "IDX file")
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: corrupt gzip file ({exc})") from None
    return data


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (plain or gzip) into a native-endian numpy array."""
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise InputError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    dtype = _dtype_for_code(code)
    if zero != 0 or dtype is None or ndim == 0:
        raise InputError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} (not an IDX file, or corrupt)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        raise InputError(
            f"{path}: IDX size mismatch: shape {tuple(shape)} needs {expected} bytes of data, "
            f"found {found} (truncated or corrupt file)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _read_with_magic(path: str, magic: int, what: str) -> np.ndarray:
    path = os.fspath(path)
    array = read_idx(path)
    found = (_code_for_dtype(array.dtype) or 0) << 8 | array.ndim
    if found != magic:
        raise InputError(
            f"{path}: IDX magic number 0x{found:08x} is not that of an MNIST {what} file "
            f"(0x{magic:08x})"
        )
    return array


def read_idx_images(path: str) -> np.ndarray:
    """Reads an MNIST-style image file: uint8 [n, rows, cols] (magic 0x00000803)."""
    return _read_with_magic(path, IMAGES_MAGIC, "image")


def read_idx_labels(path: str) -> np.ndarray:
    """Reads an MNIST-style label file: uint8 [n] (magic 0x00000801)."""
    return _read_with_magic(path, LABELS_MAGIC, "label")


def write_idx(path: str, array: np.ndarray, compress: Optional[bool] = None) -> None:
    """Writes an array as an IDX file; gzip-compressed when compress (default: name ends .gz)."""
    path = os.fspath(path)
    array = np.asarray(array)
    code = _code_for_dtype(array.dtype)
    if code is None:
        raise InputError(f"{path}: cannot write dtype {array.dtype} as IDX")
    if array.ndim == 0 or array.ndim > 255:
        raise InputError(f"{path}: cannot write a {array.ndim}-dimensional array as IDX")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    big = dict(_TYPE_CODES)[code]
    payload = header + np.ascontiguousarray(array, dtype=big).tobytes()
    if compress is None:
        compress = path.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    with open(path, "wb") as f:
        f.write(payload)
