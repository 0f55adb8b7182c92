"""Readers for user-supplied data files: ``.npy`` (memory-mapped), ``.npz`` and MNIST IDX.

Pickles are never loaded (``allow_pickle=False`` everywhere).  IDX headers are validated against
the file size before anything is allocated, so a truncated or inconsistent file is a
``ValueError`` naming the path, never a huge allocation or a short read.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

__all__ = ["load_array", "load_idx", "to_rows", "from_rows", "IDX_DTYPES"]

#: IDX type codes (third magic byte) -> big-endian NumPy dtypes.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_MAX_NDIM = 32
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24


def _path(path) -> str:
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}") from None


def _is_idx_name(name: str) -> bool:
    low = name.lower()
    if low.endswith(".gz"):
        low = low[:-3]
    return low.endswith("ubyte") or ".idx" in low


def load_array(path, *, mmap: bool = True, key=None) -> np.ndarray:
    """Load an array from ``.npy``, ``.npz`` or an IDX file (chosen by the file name).

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool, default True
        ``.npy``: return a read-only ``numpy.memmap`` instead of reading into memory.  IDX:
        memory-map uncompressed files.  Ignored for ``.npz`` (its members are read into memory).
    key : str, optional
        Member of an ``.npz`` archive; may be omitted when the archive holds one array.

    Raises
    ------
    ValueError
        Unknown extension, object (pickled) arrays, a missing or ambiguous ``key``, corrupt files.
    """
    p = _path(path)
    low = p.lower()
    if low.endswith(".npy"):
        try:
            return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"path: cannot load {p!r} without pickle ({exc})") from None
    if low.endswith(".npz"):
        with np.load(p, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None:
                if len(names) != 1:
                    raise ValueError(f"key: {p!r} holds {len(names)} arrays {names}; choose one with key=")
                key = names[0]
            if key not in names:
                raise ValueError(f"key: {key!r} is not in {p!r} (it holds {names})")
            try:
                return archive[key]
            except ValueError as exc:
                raise ValueError(f"path: cannot load {key!r} from {p!r} without pickle ({exc})") from None
    if _is_idx_name(low):
        return load_idx(p, mmap=mmap)
    raise ValueError(f"path: unsupported file type {p!r}; expected .npy, .npz or an IDX file (*-ubyte[.gz], *.idx)")


def _parse_idx_header(read, p: str):
    magic = read(4)
    if len(magic) < 4:
        raise ValueError(f"path: {p!r} is too short for an IDX header ({len(magic)} bytes)")
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(f"path: {p!r} is not an IDX file (magic {magic.hex()} does not start with 0000)")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"path: {p!r} has unknown IDX type code 0x{code:02x}")
    if ndim < 1 or ndim > _IDX_MAX_NDIM:
        raise ValueError(f"path: {p!r} declares {ndim} dimensions (expected 1..{_IDX_MAX_NDIM})")
    raw = read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ValueError(f"path: {p!r} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw)
    dtype = IDX_DTYPES[code]
    n_items = 1
    for dim in dims:
        n_items *= dim
    return dtype, tuple(int(v) for v in dims), 4 + 4 * ndim, n_items * dtype.itemsize


def _native(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.itemsize == 1:
        return arr
    return arr.astype(arr.dtype.newbyteorder("="))


def load_idx(path, *, mmap: bool = False) -> np.ndarray:
    """Read an IDX file (MNIST format), plain or gzip-compressed.

    The header is ``00 00 <type> <ndim>`` then ``ndim`` big-endian uint32 sizes, then the data in
    big-endian order.  Every size is checked against the file before any allocation: the data
    must fill the file exactly (for gzip, the uncompressed size recorded in the trailer must
    match too, and the stream is read chunk-wise into the pre-checked buffer).

    Parameters
    ----------
    path : str or os.PathLike
    mmap : bool, default False
        For uncompressed files, return a read-only memory map (big-endian dtype) instead.

    Returns
    -------
    ndarray of shape ``dims`` in native byte order (uint8 for MNIST images and labels).

    Raises
    ------
    ValueError
        Not an IDX file, unknown type code, truncated header or data, trailing bytes, a corrupt
        gzip stream.
    """
    p = _path(path)
    with open(p, "rb") as f:
        head = f.read(2)
        f.seek(0, os.SEEK_END)
        file_size = f.tell()
        f.seek(0)
        if head != _GZIP_MAGIC:
            dtype, dims, header, payload = _parse_idx_header(f.read, p)
            if file_size - header != payload:
                what = "truncated" if file_size - header < payload else "longer than its header says"
                raise ValueError(
                    f"path: {p!r} is {what}: the header {dims} needs {payload} data bytes, the file has "
                    f"{file_size - header}"
                )
            if mmap:
                if payload == 0:
                    return np.empty(dims, dtype=dtype)
                return np.memmap(p, dtype=dtype, mode="r", offset=header, shape=dims)
            data = np.fromfile(f, dtype=dtype, count=payload // dtype.itemsize)
            return _native(data.reshape(dims))
        if file_size < 18:
            raise ValueError(f"path: {p!r} is too short to be a gzip file")
        f.seek(-4, os.SEEK_END)
        isize = struct.unpack("<I", f.read(4))[0]
    try:
        with gzip.open(p, "rb") as g:
            dtype, dims, header, payload = _parse_idx_header(g.read, p)
            if (header + payload) % (1 << 32) != isize:
                raise ValueError(
                    f"path: {p!r} is truncated or inconsistent: the header {dims} needs {header + payload} "
                    f"uncompressed bytes, the gzip trailer records {isize} (mod 2^32)"
                )
            buf = np.empty(payload, dtype=np.uint8)
            view = memoryview(buf)
            got = 0
            while got < payload:
                k = g.readinto(view[got : min(got + _CHUNK, payload)])
                if not k:
                    break
                got += k
            if got < payload:
                raise ValueError(f"path: {p!r} is truncated: expected {payload} data bytes, got {got}")
            if g.read(1):
                raise ValueError(f"path: {p!r} has data beyond the {payload} bytes its header declares")
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"path: {p!r} is not a valid gzip stream ({exc})") from None
    return _native(buf.view(dtype).reshape(dims))


def to_rows(x) -> np.ndarray:
    """(N, *shape) -> (N, D) with D = prod(shape); a view whenever NumPy can make one."""
    arr = np.asarray(x)
    if arr.ndim < 1:
        raise ValueError("x: expected an array of shape (N, *shape), got a scalar")
    if arr.ndim == 1:
        raise ValueError(f"x: expected shape (N, *shape) (one point is x[None]), got shape {arr.shape}")
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64)))


def from_rows(rows, shape) -> np.ndarray:
    """(N, D) -> (N, *shape); ``shape`` is an int or a tuple of positive ints with product D."""
    arr = np.asarray(rows)
    if arr.ndim != 2:
        raise ValueError(f"rows: expected shape (N, D), got shape {arr.shape}")
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape: expected an int or a tuple of ints, got {shape!r}") from None
    if any(s < 1 for s in shape):
        raise ValueError(f"shape: sizes must be >= 1, got {shape}")
    if int(np.prod(shape, dtype=np.int64)) != arr.shape[1]:
        size = int(np.prod(shape, dtype=np.int64))
        raise ValueError(f"shape: {shape} has {size} entries, but rows have D = {arr.shape[1]}")
    return arr.reshape((arr.shape[0],) + shape)
