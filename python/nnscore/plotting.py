"""Quick-look plots: samples against the data and the manifold, trajectories, score fields and
metric curves.

matplotlib is an optional extra (``pip install 'nnscore[plot]'``); it is imported inside each
function, so ``import nnscore.plotting`` works without it and only a call raises ``ImportError``.
Every function takes ``ax=None`` (a new figure and axes are created when it is None), draws into
that axes, returns it, and never calls ``plt.show()``.  Inputs are plain arrays; only
:func:`plot_score_field` takes a model (anything with ``.score(x, t)`` and ``.shape``) and
:func:`plot_samples` optionally a manifold of :mod:`nnscore.datasets`.  Errors name the argument.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

__all__ = ["plot_samples", "plot_trajectories", "plot_score_field", "plot_metric_curve"]

_INSTALL_HINT = "nnscore.plotting needs matplotlib, an optional extra: pip install 'nnscore[plot]'"

#: Number of manifold points drawn by :func:`plot_samples` when given a manifold object.
_MANIFOLD_POINTS = 2000


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _pyplot():
    """matplotlib.pyplot, imported lazily; a missing install raises with the fix-it message."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return plt


def _get_ax(ax):
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots()
        return ax
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax: expected a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _points(a, name: str, min_ndim: int = 2) -> np.ndarray:
    """``a`` as float64 with its trailing data dimensions flattened: (n, d) (or (T, n, d))."""
    if isinstance(a, np.ndarray):
        arr = a
    elif hasattr(a, "detach") and hasattr(a, "cpu"):  # torch tensors
        arr = np.asarray(a.detach().cpu())
    else:
        arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.ndim < min_ndim:
        lead = "(n, d)" if min_ndim == 2 else "(T, n, d)"
        raise ValueError(f"{name}: expected an array of shape {lead} (or with more trailing data "
                         f"dimensions), got ndim={arr.ndim} with shape {arr.shape}")
    lead_shape = arr.shape[: min_ndim - 1]
    if arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {arr.shape}")
    out = np.asarray(arr, dtype=np.float64).reshape(*lead_shape, -1)
    if out.shape[-1] == 0:
        raise ValueError(f"{name}: points have no coordinates (shape {arr.shape})")
    return out


def _check_dims(dims, d: int, name: str = "dims") -> tuple[int, int]:
    """A pair of distinct coordinate indices in [-d, d), normalised to [0, d)."""
    try:
        pair = tuple(dims)
    except TypeError:
        raise ValueError(f"{name}: expected a pair of coordinate indices, got {dims!r}") from None
    if len(pair) != 2 or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in pair):
        raise ValueError(f"{name}: expected a pair of integer coordinate indices, got {dims!r}")
    out = []
    for i in pair:
        i = int(i)
        if not -d <= i < d:
            raise ValueError(f"{name}: index {i} out of range for points of dimension {d}")
        out.append(i % d)
    if out[0] == out[1]:
        raise ValueError(f"{name}: the two indices must differ, got {dims!r}")
    return out[0], out[1]


def _check_int(value, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def _axis_labels(ax, dims) -> None:
    if not ax.get_xlabel():
        ax.set_xlabel(f"$x_{{{dims[0]}}}$")
    if not ax.get_ylabel():
        ax.set_ylabel(f"$x_{{{dims[1]}}}$")


def _manifold_curve(manifold, d_expected):
    """(K, d) points of ``manifold`` ordered for a line plot, and whether the line is closed.

    Manifold objects are drawn from ``from_intrinsic`` on a dense grid of the parameter of a closed
    curve, otherwise from ``sample_uniform`` sorted by the intrinsic coordinate of a
    one-dimensional manifold (higher-dimensional ones are drawn as a point cloud).
    Arrays are taken as given (ordered points).
    """
    from .datasets.synthetic import Curve  # numpy-only module

    if isinstance(manifold, Curve):
        t = np.linspace(0.0, 2.0 * np.pi, _MANIFOLD_POINTS + 1)[:-1, None]
        return _points(manifold.from_intrinsic(t), "manifold"), True, True
    if hasattr(manifold, "sample_uniform"):
        pts = _points(manifold.sample_uniform(_MANIFOLD_POINTS, rng=0), "manifold")
        if getattr(manifold, "intrinsic_dim", None) == 1 and hasattr(manifold, "intrinsic_coords"):
            u = np.asarray(manifold.intrinsic_coords(pts), dtype=np.float64).reshape(len(pts), -1)[:, 0]
            return pts[np.argsort(u, kind="stable")], False, True
        return pts, False, False
    if hasattr(manifold, "from_intrinsic"):
        if getattr(manifold, "intrinsic_dim", None) != 1:
            raise ValueError("manifold: an object without sample_uniform must be a curve (intrinsic_dim 1)")
        t = np.linspace(0.0, 2.0 * np.pi, _MANIFOLD_POINTS + 1)[:-1, None]
        return _points(manifold.from_intrinsic(t), "manifold"), True, True
    pts = _points(manifold, "manifold")
    if pts.shape[1] != d_expected and d_expected is not None:
        raise ValueError(f"manifold: points have dimension {pts.shape[1]}, the samples {d_expected}")
    return pts, False, True


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------


def plot_samples(samples, train=None, manifold=None, ax=None, dims=(0, 1), labels=None, colors=None, s=8.0):
    """Scatter generated samples against the training points and the data manifold.

    Parameters
    ----------
    samples : (n, d) array (or (n, *shape)), or dict label -> array
        One scatter (a ``PathCollection``) per array, in the order given.
    train : (N, d) array, optional
        Training points, drawn black and larger (``4 * s``) on top.
    manifold : Manifold, curve object or (K, d) array, optional
        Drawn as one grey ``Line2D`` underneath.  A closed curve of :mod:`nnscore.datasets`
        (``Circle``, ``Ellipse``, ...) is traced through ``from_intrinsic`` on a dense parameter
        grid; another manifold with ``sample_uniform`` is sampled (fixed seed) and, when it is
        one-dimensional with ``intrinsic_coords``, sorted by its intrinsic coordinate; otherwise
        its points are drawn as small dots.  An array is joined in the order given.
    ax : matplotlib Axes, optional
    dims : pair of int, default (0, 1)
        The two coordinates plotted.
    labels : str or sequence of str, optional
        Legend labels of the sample arrays (default: the dict keys, or "samples").
    colors : color or sequence of colors (or dict label -> color), optional
        Default: matplotlib's colour cycle.
    s : float, default 8
        Marker area of the samples.

    Returns
    -------
    matplotlib Axes
    """
    if isinstance(samples, Mapping):
        if len(samples) == 0:
            raise ValueError("samples: the dict is empty")
        names = [str(k) for k in samples]
        arrays = [_points(v, f"samples[{k!r}]") for k, v in samples.items()]
    else:
        names = ["samples"]
        arrays = [_points(samples, "samples")]
    d = arrays[0].shape[1]
    for name, arr in zip(names, arrays):
        if arr.shape[1] != d:
            raise ValueError(f"samples: arrays have different dimensions ({d} and {arr.shape[1]} for {name!r})")
    dims = _check_dims(dims, d)
    s = _check_positive(s, "s")
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else [str(v) for v in labels]
        if len(labels) != len(arrays):
            raise ValueError(f"labels: expected {len(arrays)} labels, got {len(labels)}")
        names = labels
    if colors is None:
        color_list = [None] * len(arrays)
    elif isinstance(colors, Mapping):
        keys = list(samples) if isinstance(samples, Mapping) else names
        color_list = [colors.get(k, colors.get(n)) for k, n in zip(keys, names)]
    elif isinstance(colors, str) or (
        np.ndim(colors) == 1 and len(colors) in (3, 4) and all(isinstance(c, numbers.Real) for c in colors)
    ):
        color_list = [colors] * len(arrays)
    else:
        color_list = list(colors)
        if len(color_list) != len(arrays):
            raise ValueError(f"colors: expected {len(arrays)} colors, got {len(color_list)}")
    train_arr = None
    if train is not None:
        train_arr = _points(train, "train")
        if train_arr.shape[1] != d:
            raise ValueError(f"train: points have dimension {train_arr.shape[1]}, the samples {d}")

    if manifold is not None:
        pts, closed, as_line = _manifold_curve(manifold, d)
        if pts.shape[1] != d:
            raise ValueError(f"manifold: points have dimension {pts.shape[1]}, the samples {d}")
        if closed:
            pts = np.concatenate([pts, pts[:1]], axis=0)

    ax = _get_ax(ax)
    i, j = dims
    if manifold is not None:
        if as_line:
            style = {"linestyle": "-", "linewidth": 1.2}
        else:
            style = {"linestyle": "none", "marker": ".", "markersize": 1.5}
        ax.plot(pts[:, i], pts[:, j], color="0.6", zorder=1, label="manifold", **style)
    for name, arr, color in zip(names, arrays, color_list):
        kw = {} if color is None else {"color": color}
        ax.scatter(arr[:, i], arr[:, j], s=s, alpha=0.8, linewidths=0, label=name, zorder=2, **kw)
    if train_arr is not None:
        ax.scatter(train_arr[:, i], train_arr[:, j], s=4.0 * s, color="black", label="train", zorder=3)
    _axis_labels(ax, dims)
    if len(arrays) > 1 or train_arr is not None or manifold is not None:
        ax.legend(loc="best", fontsize="small")
    return ax


def plot_trajectories(trajectory, ax=None, dims=(0, 1), n_max=50):
    """Sampling trajectories as lines, with start (hollow) and end (filled) markers.

    Parameters
    ----------
    trajectory : (T, n, d) array (or (T, n, *shape)), e.g. the trajectory returned by
        ``nnscore.sampling.sample(..., return_trajectory=True)``.
    ax : matplotlib Axes, optional
    dims : pair of int, default (0, 1)
    n_max : int >= 1, default 50
        At most the first ``n_max`` trajectories are drawn.

    Returns
    -------
    matplotlib Axes
        Drawn: one ``LineCollection`` of the paths and two ``PathCollection`` of the markers.
    """
    traj = _points(trajectory, "trajectory", min_ndim=3)
    dims = _check_dims(dims, traj.shape[2])
    n_max = _check_int(n_max, "n_max", 1)
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    ax = _get_ax(ax)
    i, j = dims
    xy = traj[:, :n_max][:, :, [i, j]]  # (T, n, 2)
    paths = np.transpose(xy, (1, 0, 2))  # (n, T, 2)
    color = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])[0]
    lines = LineCollection(list(paths), colors=color, linewidths=0.8, alpha=0.6, zorder=1)
    ax.add_collection(lines)
    ax.scatter(paths[:, 0, 0], paths[:, 0, 1], s=18, facecolors="none", edgecolors="0.4", label="start", zorder=2)
    ax.scatter(paths[:, -1, 0], paths[:, -1, 1], s=18, color="black", label="end", zorder=3)
    ax.autoscale_view()
    _axis_labels(ax, dims)
    ax.legend(loc="best", fontsize="small")
    return ax


def _grid_limits(lim, center):
    """((x0, x1), (y0, y1)) from ``lim``: None, a half-width, a pair or a pair of pairs."""
    if lim is None:
        lim = 2.0
    if isinstance(lim, numbers.Real) and not isinstance(lim, bool):
        half = _check_positive(lim, "lim")
        return [(c - half, c + half) for c in center]
    try:
        arr = np.asarray(lim, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape not in ((2,), (2, 2)) or not np.all(np.isfinite(arr)):
        raise ValueError(f"lim: expected None, a half-width, (lo, hi) or ((x0, x1), (y0, y1)), got {lim!r}")
    rows = [arr, arr] if arr.ndim == 1 else [arr[0], arr[1]]
    for r in rows:
        if not r[0] < r[1]:
            raise ValueError(f"lim: each range needs lo < hi, got {lim!r}")
    return [(float(r[0]), float(r[1])) for r in rows]


def plot_score_field(model, t, ax=None, lim=None, n_grid=25, dims=(0, 1), base_point=None, **quiver_kw):
    """Quiver plot of ``model.score(x, t)`` on a 2-D grid through ``base_point``.

    The grid varies coordinates ``dims`` of ``base_point`` (zeros by default) over ``lim`` and
    keeps the others fixed; the arrows are the score's components along ``dims``.

    Parameters
    ----------
    model : object with ``.score(x, t)`` and ``.shape`` (the trailing data shape), e.g.
        ``nnscore.EmpiricalScore``.
    t : float
        Time (the noise level for the default "ve" schedule).
    ax : matplotlib Axes, optional
    lim : None, float, (lo, hi) or ((x0, x1), (y0, y1)), optional
        A float is a half-width around ``base_point`` (default 2); pairs are absolute ranges.
    n_grid : int >= 2, default 25
        Grid points per axis.
    dims : pair of int, default (0, 1)
    base_point : (d,) array or array of ``model.shape``, optional
    **quiver_kw
        Passed to ``Axes.quiver`` (e.g. ``color``, ``scale``).

    Returns
    -------
    matplotlib Axes
        Drawn: one ``Quiver`` (a collection).
    """
    if not callable(getattr(model, "score", None)) or not hasattr(model, "shape"):
        raise TypeError(f"model: expected an object with .score(x, t) and .shape, got {type(model).__name__}")
    shape = tuple(int(k) for k in np.atleast_1d(model.shape))
    d = int(np.prod(shape, dtype=np.int64))
    if d < 2:
        raise ValueError(f"model: a score field needs data of dimension >= 2, got shape {shape}")
    t_arr = np.asarray(t)
    if t_arr.ndim != 0 or t_arr.dtype.kind not in "fiu":
        raise ValueError(f"t: expected a real scalar time, got {t!r}")
    t = float(t_arr)
    if not np.isfinite(t):
        raise ValueError(f"t: must be finite, got {t}")
    dims = _check_dims(dims, d)
    n_grid = _check_int(n_grid, "n_grid", 2)
    if base_point is None:
        base = np.zeros(d)
    else:
        base = np.asarray(base_point, dtype=np.float64)
        if base.size != d or base.shape not in ((d,), shape):
            raise ValueError(f"base_point: expected shape ({d},) or {shape}, got {base.shape}")
        base = base.reshape(d)
        if not np.all(np.isfinite(base)):
            raise ValueError("base_point: must be finite")
    i, j = dims
    (x0, x1), (y0, y1) = _grid_limits(lim, (base[i], base[j]))

    gx, gy = np.meshgrid(np.linspace(x0, x1, n_grid), np.linspace(y0, y1, n_grid))
    x = np.repeat(base[None, :], n_grid * n_grid, axis=0)
    x[:, i] = gx.ravel()
    x[:, j] = gy.ravel()
    score = np.asarray(model.score(x.reshape(-1, *shape), t), dtype=np.float64)
    if score.size != x.size:
        raise ValueError(f"model: score returned shape {score.shape} for queries of shape {(len(x), *shape)}")
    score = score.reshape(len(x), d)
    u = score[:, i].reshape(gx.shape)
    v = score[:, j].reshape(gx.shape)

    ax = _get_ax(ax)
    kw = {"angles": "xy", "color": "C0", "pivot": "tail", "zorder": 2}
    kw.update(quiver_kw)
    ax.quiver(gx, gy, u, v, **kw)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    _axis_labels(ax, dims)
    if not ax.get_title():
        ax.set_title(f"score at t = {t:g}")
    return ax


def plot_metric_curve(x, ys, ax=None, xlabel=None, ylabel=None, logx=False, logy=False):
    """One line per metric against a common abscissa (a bandwidth h, a noise level sigma, ...).

    Parameters
    ----------
    x : (K,) array
    ys : (K,) array or dict label -> (K,) array
        One ``Line2D`` per entry, with a legend when a dict is given.  With ``logy`` non-positive
        values are left out of the line (matplotlib masks them).
    ax : matplotlib Axes, optional
    xlabel, ylabel : str, optional
    logx, logy : bool, default False
        Logarithmic axes; ``logx`` needs positive ``x``.

    Returns
    -------
    matplotlib Axes
    """
    xs = np.asarray(x)
    if xs.dtype.kind not in "fiu":
        raise TypeError(f"x: expected a real numeric array, got dtype {xs.dtype}")
    if xs.ndim != 1 or xs.size == 0:
        raise ValueError(f"x: expected a non-empty 1-D array, got shape {xs.shape}")
    xs = xs.astype(np.float64)
    if not np.all(np.isfinite(xs)):
        raise ValueError("x: must be finite")
    for flag, name in ((logx, "logx"), (logy, "logy")):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name}: expected a bool, got {flag!r}")
    if logx and np.any(xs <= 0):
        raise ValueError("x: must be positive when logx=True")
    if isinstance(ys, Mapping):
        if len(ys) == 0:
            raise ValueError("ys: the dict is empty")
        items = [(str(k), v, f"ys[{k!r}]") for k, v in ys.items()]
    else:
        items = [(None, ys, "ys")]
    curves = []
    for label, values, name in items:
        arr = np.asarray(values)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
        if arr.shape != xs.shape:
            raise ValueError(f"{name}: expected shape {xs.shape} to match x, got {arr.shape}")
        arr = arr.astype(np.float64)
        if logy:
            arr = np.where(arr > 0, arr, np.nan)
        curves.append((label, arr))

    ax = _get_ax(ax)
    for label, arr in curves:
        kw = {} if label is None else {"label": label}
        ax.plot(xs, arr, marker="o", markersize=3, **kw)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if xlabel is not None:
        ax.set_xlabel(str(xlabel))
    if ylabel is not None:
        ax.set_ylabel(str(ylabel))
    if isinstance(ys, Mapping):
        ax.legend(loc="best", fontsize="small")
    return ax
