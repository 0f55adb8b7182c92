"""nnscore.plotting: Axes in, Axes out, the expected artists, argument-naming errors."""
from __future__ import annotations

import builtins
import os
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

import nnscore as ns  # noqa: E402
from nnscore import plotting  # noqa: E402
from nnscore.datasets.synthetic import Circle, SwissRoll  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def train():
    return np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.7, 0.7]])


def _n_scatter(ax):
    return sum(isinstance(c, PathCollection) for c in ax.collections)


# -- plot_samples ---------------------------------------------------------------------------------


def test_samples_single_array_creates_axes(train):
    rng = np.random.default_rng(0)
    ax = plotting.plot_samples(rng.standard_normal((30, 2)))
    assert isinstance(ax, Axes)
    assert _n_scatter(ax) == 1
    assert len(ax.lines) == 0
    assert ax.get_xlabel() == "$x_{0}$"


def test_samples_dict_train_manifold_array_reuses_ax(train):
    rng = np.random.default_rng(1)
    fig, ax0 = plt.subplots()
    theta = np.linspace(0, 2 * np.pi, 200)
    dense = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    samples = {"a": rng.standard_normal((10, 2)), "b": rng.standard_normal((12, 2))}
    ax = plotting.plot_samples(samples, train=train, manifold=dense, ax=ax0, colors=["red", "blue"], s=5)
    assert ax is ax0
    assert _n_scatter(ax) == 3  # two sample sets + the training points
    assert len(ax.lines) == 1
    train_coll = ax.collections[-1]
    assert np.allclose(train_coll.get_offsets(), train)
    assert np.allclose(train_coll.get_sizes(), 20.0)  # larger than the samples
    assert np.allclose(train_coll.get_facecolor()[0][:3], 0.0)  # black
    assert np.allclose(ax.collections[0].get_offsets(), samples["a"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["manifold", "a", "b", "train"]
    assert np.allclose(ax.lines[0].get_xydata(), dense)


def test_samples_closed_curve_manifold_and_dims():
    circle = Circle(n=8, radius=2.0, ambient_dim=3, rng=0)
    samples = circle.sample(20, rng=1)
    ax = plotting.plot_samples(samples, train=circle.points, manifold=circle, dims=(2, 0))
    assert len(ax.lines) == 1
    xy = ax.lines[0].get_xydata()
    assert np.allclose(xy[0], xy[-1])  # closed
    fine = circle.from_intrinsic(np.linspace(0, 2 * np.pi, 1001)[:, None])[:, [2, 0]]
    gap = np.min(np.linalg.norm(xy[:, None, :] - fine[None, :, :], axis=2), axis=1)
    assert np.max(gap) < 1e-2  # every vertex lies on the (projected) circle
    # consecutive points are close: the curve is traced in order, not scattered
    assert np.max(np.linalg.norm(np.diff(xy, axis=0), axis=1)) < 0.05
    assert np.allclose(ax.collections[0].get_offsets(), samples[:, [2, 0]])
    assert ax.get_xlabel() == "$x_{2}$"


def test_samples_surface_manifold_drawn_as_dots():
    roll = SwissRoll(n=10, rng=0)
    ax = plotting.plot_samples(roll.points, manifold=roll, dims=(0, 2))
    assert len(ax.lines) == 1
    assert ax.lines[0].get_linestyle() == "None"
    assert _n_scatter(ax) == 1


def test_samples_labels_and_color_dict():
    rng = np.random.default_rng(2)
    ax = plotting.plot_samples({"x": rng.random((4, 2)), "y": rng.random((4, 2))}, labels=["p", "q"],
                               colors={"x": "red", "y": "green"})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["p", "q"]
    assert np.allclose(ax.collections[0].get_facecolor()[0][:3], (1.0, 0.0, 0.0))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(samples=np.zeros(5)), "samples"),
        (dict(samples=np.zeros((5, 2)), dims=(0, 2)), "dims"),
        (dict(samples=np.zeros((5, 2)), dims=(1, 1)), "dims"),
        (dict(samples=np.zeros((5, 2)), dims=(0,)), "dims"),
        (dict(samples=np.zeros((5, 2)), train=np.zeros((3, 3))), "train"),
        (dict(samples=np.zeros((5, 2)), train=np.zeros(3)), "train"),
        (dict(samples=np.zeros((5, 2)), manifold=np.zeros((9, 3))), "manifold"),
        (dict(samples={"a": np.zeros((5, 2)), "b": np.zeros((5, 3))}), "samples"),
        (dict(samples={}), "samples"),
        (dict(samples=np.zeros((5, 2)), labels=["a", "b"]), "labels"),
        (dict(samples=np.zeros((5, 2)), s=-1.0), "s"),
    ],
)
def test_samples_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        plotting.plot_samples(**kwargs)
    assert plt.get_fignums() == []  # nothing was drawn before validation failed


# -- plot_trajectories ----------------------------------------------------------------------------


def test_trajectories_artists_and_n_max():
    rng = np.random.default_rng(3)
    traj = np.cumsum(rng.standard_normal((15, 8, 3)), axis=0)
    ax = plotting.plot_trajectories(traj, dims=(1, 2), n_max=5)
    assert isinstance(ax, Axes)
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1
    assert len(lines[0].get_segments()) == 5
    assert np.allclose(lines[0].get_segments()[0], traj[:, 0, 1:])
    assert _n_scatter(ax) == 2
    assert np.allclose(ax.collections[1].get_offsets(), traj[0, :5, 1:])  # starts
    assert np.allclose(ax.collections[2].get_offsets(), traj[-1, :5, 1:])  # ends


def test_trajectories_from_sampler_reuses_ax(train):
    model = ns.EmpiricalScore(train)
    out, traj = ns.sampling.sample(model, n=6, steps=10, rng=0, return_trajectory=True)
    assert traj.shape == (11, 6, 2)
    fig, ax0 = plt.subplots()
    ax = plotting.plot_trajectories(traj, ax=ax0)
    assert ax is ax0
    assert len(ax.collections) == 3
    assert len(ax.collections[0].get_segments()) == 6
    assert np.allclose(ax.collections[2].get_offsets(), out)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(trajectory=np.zeros((4, 2))), "trajectory"),
        (dict(trajectory=np.zeros((4, 3, 2)), dims=(0, 5)), "dims"),
        (dict(trajectory=np.zeros((4, 3, 2)), n_max=0), "n_max"),
        (dict(trajectory=np.zeros((0, 3, 2))), "trajectory"),
    ],
)
def test_trajectories_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        plotting.plot_trajectories(**kwargs)


# -- plot_score_field -----------------------------------------------------------------------------


def test_score_field_empirical(train):
    model = ns.EmpiricalScore(train)
    ax = plotting.plot_score_field(model, 0.5, n_grid=7, lim=1.5)
    assert isinstance(ax, Axes)
    quivers = [c for c in ax.collections if isinstance(c, Quiver)]
    assert len(ax.collections) == 1 and len(quivers) == 1
    q = quivers[0]
    assert q.N == 49
    assert ax.get_xlim() == (-1.5, 1.5)
    grid = np.asarray(q.get_offsets())
    expected = model.score(grid, 0.5)
    assert np.allclose(q.U, expected[:, 0]) and np.allclose(q.V, expected[:, 1])


def test_score_field_base_point_dims_and_reused_ax():
    rng = np.random.default_rng(5)
    train = rng.standard_normal((6, 3))
    model = ns.EmpiricalScore(train)
    base = np.array([0.3, -0.2, 0.5])
    fig, ax0 = plt.subplots()
    ax = plotting.plot_score_field(model, 0.8, ax=ax0, n_grid=4, dims=(2, 0), base_point=base,
                                   lim=((-1, 1), (-2, 2)), color="k")
    assert ax is ax0
    q = ax.collections[0]
    pts = np.asarray(q.get_offsets())
    x = np.repeat(base[None], len(pts), axis=0)
    x[:, 2], x[:, 0] = pts[:, 0], pts[:, 1]
    expected = model.score(x, 0.8)
    assert np.allclose(q.U, expected[:, 2]) and np.allclose(q.V, expected[:, 0])
    assert ax.get_xlim() == (-1.0, 1.0) and ax.get_ylim() == (-2.0, 2.0)


def test_score_field_over_samples(train):
    ax = plotting.plot_samples(train, manifold=Circle(n=4, rng=0))
    plotting.plot_score_field(ns.EmpiricalScore(train), 0.3, ax=ax, n_grid=5)
    assert _n_scatter(ax) == 1 and sum(isinstance(c, Quiver) for c in ax.collections) == 1
    assert len(ax.lines) == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(dims=(0, 2)), "dims"),
        (dict(n_grid=1), "n_grid"),
        (dict(base_point=np.zeros(3)), "base_point"),
        (dict(base_point=np.zeros((1, 2))), "base_point"),
        (dict(lim=(1.0, 0.0)), "lim"),
        (dict(lim=-1.0), "lim"),
        (dict(lim=(0, 1, 2)), "lim"),
        (dict(t=np.array([0.1, 0.2])), "t"),
    ],
)
def test_score_field_bad_input(train, kwargs, name):
    model = ns.EmpiricalScore(train)
    kwargs = {"t": 0.5, **kwargs}
    with pytest.raises(ValueError, match=f"^{name}:"):
        plotting.plot_score_field(model, **kwargs)


def test_score_field_rejects_non_model():
    with pytest.raises(TypeError, match="model"):
        plotting.plot_score_field(np.zeros((3, 2)), 0.5)


# -- plot_metric_curve ----------------------------------------------------------------------------


def test_metric_curve_dict_log_axes():
    h = np.geomspace(1e-3, 1.0, 6)
    ys = {"mse": h**2, "bias": np.sqrt(h), "zero": np.zeros(6)}
    ax = plotting.plot_metric_curve(h, ys, xlabel="h", ylabel="error", logx=True, logy=True)
    assert isinstance(ax, Axes)
    assert len(ax.lines) == 3
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "h" and ax.get_ylabel() == "error"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mse", "bias", "zero"]
    assert np.allclose(ax.lines[0].get_ydata(), h**2)
    assert np.all(np.isnan(ax.lines[2].get_ydata()))  # non-positive values masked on a log axis


def test_metric_curve_single_array_reuses_ax():
    fig, ax0 = plt.subplots()
    ax = plotting.plot_metric_curve([0.1, 0.2, 0.4], [3, 2, 1], ax=ax0)
    assert ax is ax0
    assert len(ax.lines) == 1
    assert ax.get_legend() is None
    assert ax.get_xscale() == "linear"
    plotting.plot_metric_curve([0.1, 0.2, 0.4], {"b": [1, 1, 1]}, ax=ax)
    assert len(ax.lines) == 2


@pytest.mark.parametrize(
    "args, kwargs, name",
    [
        ((np.zeros((3, 2)), [1, 2, 3]), {}, "x"),
        ((np.arange(3.0), [1, 2]), {}, "ys"),
        ((np.arange(3.0), {"a": [1, 2, 3], "b": [[1, 2, 3]]}), {}, "ys\\['b'\\]"),
        ((np.arange(3.0), [1, 2, 3]), {"logx": True}, "x"),
        ((np.arange(3.0), {}), {}, "ys"),
    ],
)
def test_metric_curve_bad_input(args, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        plotting.plot_metric_curve(*args, **kwargs)


# -- conventions ----------------------------------------------------------------------------------


def test_missing_matplotlib_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'nnscore\[plot\]'"):
        plotting.plot_metric_curve([1.0, 2.0], [1.0, 2.0])


def test_import_is_lazy():
    code = ("import sys, nnscore.plotting as p; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'; print(sorted(p.__all__))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(sorted(
        ["plot_samples", "plot_trajectories", "plot_score_field", "plot_metric_curve"]))


def test_never_shows_and_new_figure_per_call(monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    rng = np.random.default_rng(6)
    plotting.plot_samples(rng.random((5, 2)))
    plotting.plot_trajectories(rng.random((3, 2, 2)))
    plotting.plot_metric_curve([1.0, 2.0], [1.0, 2.0])
    plotting.plot_score_field(ns.EmpiricalScore(rng.random((4, 2))), 0.5, n_grid=3)
    assert shown == []
    assert len(plt.get_fignums()) == 4  # ax=None made a new figure each time
    for num in plt.get_fignums():
        fig = plt.figure(num)
        fig.canvas.draw()  # every figure renders
        assert fig.canvas.get_renderer() is not None
