"""EmpiricalScore(cells=...): exact cell skipping against the float64 oracle.

The cell path must keep the dense engine's guarantee (the same tolerances as test_empirical.py),
so every case is checked against ``ref_f64`` over the whole noise range, and the diagnostics
prove that the cases with small noise really skipped cells (``rows_scanned`` < N).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnscore as ns
from nnscore.scores import cell_pruning

from conftest import data_radius, nn_spacing, ref_f64
from test_empirical import SIGMA_FACTORS, _queries, assert_matches_oracle

DTYPES = [np.float32, np.float64]
HOST = [b for b in ("cpp", "numba") if b in ns.available_backends()]


def _clustered(rng, n, d, dtype, n_clusters=12, spread=0.05, scale=1.0):
    """Tight clusters far apart (the data where small noise skips most cells), plus duplicates."""
    centres = rng.standard_normal((n_clusters, d)) * scale
    x = centres[rng.integers(0, n_clusters, size=n)] + spread * rng.standard_normal((n, d))
    x[-5:] = x[:5]  # exact duplicates, in other cells' order positions
    return x.astype(dtype)


def _rows_scanned(model, x, sigma) -> np.ndarray:
    diag: dict = {}
    y = np.asarray(x, dtype=model.dtype).reshape(len(x), -1)
    model._partials_ve(y, np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(x),)).copy(), diagnostics=diag)
    return diag["rows_scanned"]


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("d,n,m", [(1, 2000, 40), (2, 3000, 40), (16, 2000, 30), (64, 1000, 20)])
def test_cells_match_oracle(backend, dtype, d, n, m, seed):
    rng = np.random.default_rng([seed, d, n, 17])
    train = _clustered(rng, n, d, dtype)
    model = ns.EmpiricalScore(train, backend=backend, cells=24)
    R, s = data_radius(train), nn_spacing(train)
    skipped = False
    for f in SIGMA_FACTORS:
        sigma = f * s
        for kind in ("noisy", "on_train", "far"):
            x = _queries(rng, train, kind, m, sigma)
            res = model.evaluate(x, sigma)
            assert_matches_oracle(res, ref_f64(train, x, sigma), x, dtype, R, what=f"{backend} cells {f:g}s {kind}")
            rows = _rows_scanned(model, x, sigma)
            assert np.all((rows >= 1) & (rows <= n))
            skipped |= bool(np.any(rows < n))
    assert skipped, "no query skipped a cell: the cell path was not exercised"
    # Per-query noise levels over the whole range in one call: some queries skip, others go dense.
    sig = s * np.asarray(SIGMA_FACTORS)[rng.integers(0, len(SIGMA_FACTORS), size=m)]
    x = _queries(rng, train, "noisy", m, sig)
    res = model.evaluate(x, sig)
    assert_matches_oracle(res, ref_f64(train, x, sig), x, dtype, R, what=f"{backend} cells per-query t")


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cells_with_weights_and_a_massless_cell(backend, dtype, seed):
    rng = np.random.default_rng([seed, 29])
    n, d, m = 2400, 8, 30
    train = _clustered(rng, n, d, dtype, n_clusters=8)
    model0 = ns.EmpiricalScore(train, backend=backend, cells=16)
    w = rng.uniform(0.0, 3.0, size=n)
    w[rng.random(n) < 0.1] = 0.0
    order, offsets = model0.cells.order, model0.cells.index.cell_offsets
    w[order[offsets[3]:offsets[4]]] = 0.0  # a whole cell without mass: log pi_max = -inf
    model = ns.EmpiricalScore(train, weights=w, backend=backend, cells=model0.cells.index)
    R, s = data_radius(train), nn_spacing(train)
    for f in SIGMA_FACTORS:
        x = _queries(rng, train, "noisy", m, f * s)
        res = model.evaluate(x, f * s)
        assert_matches_oracle(res, ref_f64(train, x, f * s, weights=w), x, dtype, R, what=f"weighted {f:g}s")
        assert np.all(w[res.top1] > 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cells_single_point_and_one_cell(dtype):
    train = np.array([[0.5, -1.0, 2.0]], dtype=dtype)
    x = np.array([[0.0, 0.0, 0.0], [0.5, -1.0, 2.0]], dtype=dtype)
    for sigma in (1e-4, 1.0, 1e3):
        a = ns.EmpiricalScore(train, cells=1).evaluate(x, sigma)
        b = ns.EmpiricalScore(train).evaluate(x, sigma)
        np.testing.assert_array_equal(a.denoised, b.denoised)
        np.testing.assert_allclose(a.log_density, b.log_density, rtol=1e-12)
        np.testing.assert_array_equal(a.top1, [0, 0])


def test_cells_empty_queries():
    train = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
    res = ns.EmpiricalScore(train, cells=8).evaluate(np.zeros((0, 4), np.float32), 0.1)
    assert res.denoised.shape == (0, 4) and res.log_density.shape == (0,)


@given(seed=st.integers(0, 2**31 - 1), log_f=st.floats(-4.0, 3.0), n_cells=st.integers(1, 40))
def test_cells_agree_with_dense(seed, log_f, n_cells):
    """Property: any partition and noise level give the dense engine's result (both exact)."""
    rng = np.random.default_rng(seed)
    train = _clustered(rng, 600, 5, np.float64, n_clusters=int(rng.integers(1, 9)))
    sigma = 10.0**log_f * nn_spacing(train)
    x = _queries(rng, train, "noisy", 25, sigma)
    a = ns.EmpiricalScore(train, cells=n_cells).evaluate(x, sigma)
    b = ns.EmpiricalScore(train).evaluate(x, sigma)
    R = data_radius(train)
    np.testing.assert_allclose(a.denoised, b.denoised, rtol=0, atol=1e-9 * R + 1e-12 * np.abs(b.denoised).max())
    np.testing.assert_allclose(a.log_density, b.log_density, rtol=1e-11, atol=1e-11)


def test_cells_auto_and_repr():
    small = np.random.default_rng(1).standard_normal((cell_pruning.AUTO_MIN_ROWS - 1, 3))
    assert ns.EmpiricalScore(small, cells="auto").cells is None
    big = np.random.default_rng(2).standard_normal((cell_pruning.AUTO_MIN_ROWS, 3)).astype(np.float32)
    model = ns.EmpiricalScore(big, cells="auto")
    assert model.cells.n_cells == round(0.5 * np.sqrt(cell_pruning.AUTO_MIN_ROWS))
    assert f"cells={model.cells.n_cells}" in repr(model)


def test_cells_bad_input():
    rng = np.random.default_rng(3)
    train = rng.standard_normal((300, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="cells"):
        ns.EmpiricalScore(train, cells=0)
    with pytest.raises(ValueError, match="cells"):
        ns.EmpiricalScore(train, cells=301)
    with pytest.raises(ValueError, match="cells"):
        ns.EmpiricalScore(train, cells="kmeans")
    with pytest.raises(TypeError, match="cells"):
        ns.EmpiricalScore(train, cells=2.5)
    with pytest.raises(TypeError, match="cells"):
        ns.EmpiricalScore(train, cells=True)
    with pytest.raises(ValueError, match="cells.*ivf"):
        ns.EmpiricalScore(train, cells=ns.TrainingIndex(train, kind="flat"))
    other = rng.standard_normal((300, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="cells.*other training rows"):
        ns.EmpiricalScore(train, cells=ns.TrainingIndex(other, kind="ivf", nlist=4))
    with pytest.raises(ValueError, match="cells.*rows of dimension"):
        ns.EmpiricalScore(train[:200], cells=ns.TrainingIndex(train, kind="ivf", nlist=4))
    with pytest.raises(ValueError, match="cells.*host backends"):
        ns.EmpiricalScore(train, backend="reference", cells=4)


def test_cells_third_moment_and_schedules():
    """The cell path sits under every use of the exact engine: third moments (taylor2) and non-VE
    schedules give the dense model's results."""
    rng = np.random.default_rng(7)
    train = _clustered(rng, 1500, 6, np.float64)
    s = nn_spacing(train)
    dense, cells = ns.EmpiricalScore(train), ns.EmpiricalScore(train, cells=20)
    x = _queries(rng, train, "noisy", 25, 0.5 * s)
    (ra, ta), (rb, tb) = cells.third_moment(x, 0.5 * s), dense.third_moment(x, 0.5 * s)
    assert np.any(_rows_scanned(cells, x, 0.5 * s) < len(train))
    R = data_radius(train)
    np.testing.assert_allclose(ra.denoised, rb.denoised, rtol=0, atol=1e-9 * R)
    np.testing.assert_allclose(ta, tb, rtol=1e-7, atol=1e-9 * R**3)
    for schedule, t in (("vp", 0.05), ("edm", 0.02), ("flow", 0.01)):
        a = ns.EmpiricalScore(train, schedule=schedule, cells=20).evaluate(x, t)
        b = ns.EmpiricalScore(train, schedule=schedule).evaluate(x, t)
        np.testing.assert_allclose(a.denoised, b.denoised, rtol=0, atol=1e-9 * R)
        np.testing.assert_allclose(a.log_density, b.log_density, rtol=1e-11, atol=1e-11)


def test_no_key_scans_where_the_key_axis_carries_little():
    """Isotropic data: the principal axis carries ~1/d of the spread (key_share), key windows
    would hold most of a cell, and key_scans spends nothing (no scan complete, every max
    -inf: whole-cell first scans)."""
    rng = np.random.default_rng(4)
    points = rng.standard_normal((4000, 16))
    data = ns.backends.TrainingData.prepare(points)
    offsets = np.array([0, 4000], dtype=np.int64)
    cells, _ = ns.backends.CellSortedData.keyed(points, None, np.arange(4000), offsets, data.center)
    assert 0.0 < cells.key_share < ns.backends.KEY_WINDOW_MIN_SHARE and not cells.windows_pay
    y = points[:8] + 1e-3
    p, done, terms = cell_pruning.key_scans("cpp", cells, y, np.full(8, 1e-3), np.zeros(8, np.int64), 0.0, 0.0,
                                            30.0, lambda work: 2)  # fmt: skip
    assert np.all(np.isneginf(p.m)) and not done.any() and not terms.any()
    line = np.column_stack([np.linspace(-50, 50, 4000), rng.standard_normal((4000, 15))])
    keyed, _ = ns.backends.CellSortedData.keyed(line, None, np.arange(4000), offsets, line.mean(axis=0))
    assert keyed.key_share > 0.9
    # sigma so large that no window could be thin: no scan either
    p, done, _ = cell_pruning.key_scans("cpp", keyed, line[:8], np.full(8, 30.0), np.zeros(8, np.int64), 0.0, 0.0,
                                        30.0, lambda work: 2)  # fmt: skip
    assert np.all(np.isneginf(p.m)) and not done.any()


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
@pytest.mark.parametrize("d", [8, 24])
def test_cells_with_key_windows_and_long_runs_match_oracle(backend, dtype, weighted, d, seed, monkeypatch):
    """Data whose principal axis carries most of the spread (key scans of the own cell, key
    windows elsewhere; row sketches at d = 24), with a run of 300 copies of one row (one term
    per query): the cells model and KNNScore on its index give the float64 oracle's results
    (KNNScore within its bound)."""
    scans = []
    key_scan = ns.backends.partials_key_scan

    def counted(*args, **kwargs):
        out = key_scan(*args, **kwargs)
        scans.append(int(out[1].sum()))
        return out

    monkeypatch.setattr(ns.backends, "partials_key_scan", counted)
    rng = np.random.default_rng([seed, 29, int(weighted), d])
    n = 4000
    t = rng.uniform(-30.0, 30.0, n)
    train = np.column_stack([t, 0.3 * rng.standard_normal((n, d - 1))])
    train[1000:1300] = train[1000]
    train = train.astype(dtype)
    weights = rng.uniform(0.5, 1.0, n) if weighted else None
    if weighted:
        weights[1000:1300] = 0.7
    model = ns.EmpiricalScore(train, weights=weights, backend=backend, cells=8)
    assert model.cells.cells.windows_pay and model.cells.cells.runs is not None
    assert (model.cells.cells.row_sketch is not None) == (d >= ns.backends.SKETCH_MIN_DIM)
    R, s = data_radius(train), nn_spacing(train)
    for f in SIGMA_FACTORS:
        sigma = f * s
        for kind in ("noisy", "on_train"):
            x = _queries(rng, train, kind, 24, sigma)
            x[:4] = train[1000] + (0.0 if kind == "on_train" else 0.5 * sigma)  # at the run
            ref = ref_f64(train, x, sigma, weights=weights) if weighted else ref_f64(train, x, sigma)
            res = model.evaluate(x, sigma)
            assert_matches_oracle(res, ref, x, dtype, R, what=f"{backend} keyed cells {f:g}s {kind}")
    index = ns.TrainingIndex(train, kind="ivf", nlist=8, rng=0)
    knn = ns.KNNScore(index, weights=weights, tol=1e-4, backend=backend)
    assert knn._cells.windows_pay
    oracle = ns.EmpiricalScore(train.astype(np.float64), weights=weights)
    for f in (1e-3, 1e-2, 0.3):
        x = _queries(rng, train, "noisy", 32, f * s)
        x[:4] = train[1000]
        res = knn.evaluate(x, f * s)
        true = oracle.evaluate(x.astype(np.float64), f * s)
        err = np.linalg.norm(res.denoised.astype(np.float64) - true.denoised, axis=1)
        bound = knn.denoiser_error_bound(res, 1.0)
        # the certificate holds before the cast of D to the data's dtype
        cast = float(np.finfo(dtype).eps) * np.linalg.norm(true.denoised, axis=1)
        ok = res.path == "ivf-certified"
        assert ok.any() and np.all(err[ok] <= bound[ok] * (1 + 1e-6) + cast[ok] + 1e-12 * R)
    # the key scans ran, and completed, for cpp only
    assert (sum(scans) > 0) == (backend == "cpp"), scans
