"""partials_cells (the IVF scan: dense tile kernel one cell at a time, products about each cell's
centre) against the float64 oracle over the same rows, at every compiled SIMD level; the other
backends run the gathered kernel on the same rows.  Plus CellSortedData and the binding's checks."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnscore as ns
from nnscore import backends as nb

from nnscore.partials import merge, take

from test_segments import VARIANTS, VIDS, check, dense_oracle


def cell_data(rng, d, dtype, sizes, weighted, spread=1.0):
    """Cell-sorted clustered points: cell c around its own centre, sizes[c] rows (0 allowed);
    a few exact duplicates and, in the last non-empty cell, one far outlier."""
    centres = rng.normal(size=(len(sizes), d)) * 5.0
    rows = [centres[c] + spread * rng.uniform(0.01, 1.0) * rng.normal(size=(n, d)) for c, n in enumerate(sizes)]
    points = np.concatenate(rows).astype(dtype)
    n = points.shape[0]
    points[1:6] = points[0]  # duplicates inside the first cell
    points[n - 1] += 40.0  # an outlier: a large cell radius
    log_w = None
    if weighted:
        log_w = np.log(rng.uniform(0.1, 1.0, n))
        log_w[rng.choice(n, n // 10, replace=False)] = -np.inf
        log_w -= log_w[np.isfinite(log_w)].max()
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return nb.CellSortedData.build(points, log_w, offsets)


def segments_of(cells: nb.CellSortedData, probed: np.ndarray) -> nb.Segments:
    q_of, c_of = np.nonzero(probed)
    offs = cells.offsets
    counts = np.bincount(q_of, minlength=probed.shape[0])
    return nb.Segments(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), offs[c_of], offs[c_of + 1] - offs[c_of])


def queries(rng, cells, n_q, scale):
    pts = cells.points.astype(np.float64)
    y = pts[rng.integers(0, pts.shape[0], n_q)] + scale * rng.normal(size=(n_q, pts.shape[1]))
    y[-1] = pts.mean(axis=0) + 100.0 * np.max(cells.radii)  # far from everything
    y[-2] = pts[0]  # exactly on the duplicated row
    return y.astype(cells.points.dtype)


def assert_bitwise_equal(a, b):
    for f in ("m", "z", "v", "q", "z2", "top1"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


SIZES = [0, 40, 7, 1, 0, 120, 4500, 33, 64]  # empty cells, tiny cells, one cell split into pieces


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("d", [1, 3, 17, 64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
def test_cells_match_dense_reference(variant, dtype, d, weighted, seed):
    backend, level = variant
    rng = np.random.default_rng([seed, d, int(weighted), np.dtype(dtype).itemsize, 31])
    cells = cell_data(rng, d, dtype, SIZES, weighted)
    n_q = 21
    probed = (rng.uniform(size=(n_q, len(SIZES))) < 0.4).astype(np.uint8)
    probed[0] = 0  # a query with no cell: the empty partial
    probed[1] = 1  # every cell
    probed[-2:, 0:2] = 1  # the far and the on-a-row query scan the first cell
    seg = segments_of(cells, probed)
    y = queries(rng, cells, n_q, 0.3)
    for sigma in (np.full(n_q, 1e-6), np.full(n_q, 1e-3), rng.uniform(0.2, 2.0, n_q), np.full(n_q, 1e6)):
        p = nb.partials_cells(backend, y, sigma, cells, probed, 2, level=level)
        check(p, y, cells.points, sigma, cells.log_w, seg, f"{backend}{level} sigma={sigma[0]:.1e}")


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
def test_cells_deterministic_per_thread_count_and_agree_across(seed):
    rng = np.random.default_rng([seed, 8])
    cells = cell_data(rng, 16, np.float32, SIZES * 3, False)
    probed = (rng.uniform(size=(50, len(SIZES) * 3)) < 0.5).astype(np.uint8)
    y = queries(rng, cells, 50, 0.5)
    sigma = rng.uniform(0.05, 3.0, 50)
    runs = {t: [nb.partials_cells("cpp", y, sigma, cells, probed, t) for _ in range(2)] for t in (1, 2, 3)}
    for a, b in runs.values():
        assert_bitwise_equal(a, b)
    a, b = runs[1][0], runs[3][0]
    np.testing.assert_allclose(a.m + np.log(a.z), b.m + np.log(b.z), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(a.v / a.z[:, None], b.v / b.z[:, None], rtol=0, atol=1e-11)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_cells=st.integers(1, 6), d=st.integers(1, 20), n_q=st.integers(1, 9), log_sigma=st.floats(-7, 4),
       seed=st.integers(0, 2**31 - 1), f64=st.booleans())
def test_cells_property_random_problems(n_cells, d, n_q, log_sigma, seed, f64):
    rng = np.random.default_rng(seed)
    sizes = list(rng.integers(0, 40, n_cells))
    if sum(sizes) < 2:
        sizes[0] = 2
    cells = cell_data(rng, d, np.float64 if f64 else np.float32, sizes, bool(rng.integers(0, 2)))
    probed = (rng.uniform(size=(n_q, n_cells)) < 0.6).astype(np.uint8)
    y = queries(rng, cells, n_q, float(rng.uniform(0.0, 2.0))) if n_q >= 2 else cells.points[:1].copy()
    sigma = np.full(n_q, 10.0**log_sigma)
    backend = "cpp" if ns.HAS_CORE else "reference"
    p = nb.partials_cells(backend, y, sigma, cells, probed, 2)
    check(p, y, cells.points, sigma, cells.log_w, segments_of(cells, probed), f"sigma={sigma[0]:.1e}")


def test_cell_sorted_data_build(seed):
    rng = np.random.default_rng([seed, 3])
    sizes = [5, 0, 70, 1]
    cells = cell_data(rng, 7, np.float32, sizes, False)
    for c, (a, b) in enumerate(zip(cells.offsets[:-1], cells.offsets[1:])):
        rows = cells.points[a:b].astype(np.float64)
        if b == a:
            assert cells.radii[c] == 0.0
            continue
        np.testing.assert_allclose(cells.centers[c], rows.mean(axis=0), rtol=1e-6, atol=1e-6)
        dist = np.linalg.norm(rows - cells.centers[c].astype(np.float64), axis=1)
        assert cells.radii[c] >= dist.max() and cells.radii[c] <= dist.max() * (1 + 1e-9)
        np.testing.assert_allclose(cells.half_sqnorm[a:b], 0.5 * dist**2, rtol=1e-12)
    assert cells.centers.dtype == np.float32 and cells.centers.flags.c_contiguous


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("case", ["offsets_short", "offsets_end", "offsets_decreasing", "probed_rows", "centers"])
def test_binding_rejects_bad_cells(case):
    rng = np.random.default_rng(0)
    n, d, n_q, n_cells = 30, 4, 3, 3
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n_q, d))
    sigma = np.ones(n_q)
    offsets = np.array([0, 10, 20, 30], np.int64)
    probed = np.ones((n_q, n_cells), np.uint8)
    centers = np.zeros((n_cells, d))
    if case == "offsets_short":
        offsets = offsets[:-1]
    elif case == "offsets_end":
        offsets = np.array([0, 10, 20, 29], np.int64)
    elif case == "offsets_decreasing":
        offsets = np.array([0, 20, 10, 30], np.int64)
    elif case == "probed_rows":
        probed = np.ones((n_q + 1, n_cells), np.uint8)
    elif case == "centers":
        centers = np.zeros((n_cells + 1, d))
    m, z, q, z2 = (np.empty(n_q) for _ in range(4))
    v = np.empty((n_q, d))
    top1, n_exact = np.empty(n_q, np.int64), np.empty(n_q, np.int64)
    with pytest.raises(ValueError):
        nb._core.partials_cells_f64(y, x, np.zeros(n), None, sigma, probed, offsets, centers, np.ones(n_cells),
                                    m, z, v, q, z2, top1, n_exact, 0.0, 40.0, 1, 0)  # fmt: skip


def keyed_cell_data(rng, d, dtype, sizes, weighted):
    """cell_data's rows, each cell re-sorted by key (CellSortedData.keyed)."""
    base = cell_data(rng, d, dtype, sizes, weighted)
    order = np.arange(base.points.shape[0])
    origin = base.points.astype(np.float64).mean(axis=0)
    cells, perm = nb.CellSortedData.keyed(base.points, base.log_w, order, base.offsets, origin)
    return cells, perm, base


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("d", [1, 3, 64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
def test_key_windows_skip_only_terms_below_the_floor(variant, dtype, d, weighted, seed):
    """With a floor of (max logit - log_cut), the key windows leave out only rows the kernels
    may skip: the partials match the float64 oracle over the whole probed cells.  At small
    sigma the windows leave out most rows (so the test exercises them); at huge sigma none."""
    backend, level = variant
    rng = np.random.default_rng([seed, d, int(weighted), np.dtype(dtype).itemsize, 47])
    cells, perm, base = keyed_cell_data(rng, d, dtype, SIZES, weighted)
    assert np.array_equal(cells.points, base.points[perm])
    for c, (a, b) in enumerate(zip(cells.offsets[:-1], cells.offsets[1:])):
        assert np.all(np.diff(cells.row_keys[a:b]) >= 0) and set(perm[a:b]) == set(range(a, b))
    n_q = 21
    probed = (rng.uniform(size=(n_q, len(SIZES))) < 0.4).astype(np.uint8)
    probed[1] = 1
    probed[-2:, 0:2] = 1
    seg = segments_of(cells, probed)
    y = queries(rng, cells, n_q, 1e-3)  # near rows: thin windows at small sigma
    log_cut = nb.skip_log_cut(cells.points.shape[0], dtype)
    for sigma in (np.full(n_q, 1e-6), np.full(n_q, 1e-2), rng.uniform(0.2, 2.0, n_q), np.full(n_q, 1e6)):
        what = f"{backend}{level} sigma={sigma[0]:.1e}"
        m_true = dense_oracle(y, cells.points, sigma, cells.log_w, seg)[0]
        floor = m_true - log_cut
        p = nb.partials_cells(backend, y, sigma, cells, probed, 2, level=level, floor=floor)
        check(p, y, cells.points, sigma, cells.log_w, seg, what)
        lo, hi = cells.key_windows(y, sigma, probed, floor)
        if sigma[0] == 1e-6 and d > 1:
            assert np.sum(hi - lo) < 0.5 * np.sum(seg.length), what
        if sigma[0] == 1e6:
            assert np.sum(hi - lo) == np.sum(seg.length), what
    if backend == "cpp":  # no floor: whole cells, bitwise the call without one
        sigma = np.full(n_q, 1e-2)
        assert_bitwise_equal(nb.partials_cells(backend, y, sigma, cells, probed, 2, level=level),
                             nb.partials_cells(backend, y, sigma, cells, probed, 2, level=level,
                                               floor=np.full(n_q, -np.inf)))  # fmt: skip
    # guard: the floor is honoured (one above every logit leaves every window empty)
    bad = nb.partials_cells(backend, y, sigma, cells, probed, 2, level=level, floor=np.full(n_q, 1e300))
    assert np.all(np.isneginf(bad.m)) and np.all(bad.z == 0)


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("d", [3, 64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
def test_start_max_for_merged_scans(variant, dtype, d, weighted, seed):
    """A scan merged into a partial of known max (the other cells after the query's own, in
    CellPruning and KNNScore) may start at that max (``start_max``): the merge still matches
    the float64 oracle over all the rows, at every sigma and on the mixed-path redo; -inf is the
    call without it, bit for bit; a start above every logit leaves no mass, m exactly the start
    and top1 -1 (cpp; the other backends ignore it)."""
    backend, level = variant
    rng = np.random.default_rng([seed, d, int(weighted), np.dtype(dtype).itemsize, 53])
    cells = cell_data(rng, d, dtype, SIZES, weighted)
    n_q = 23
    first = (rng.uniform(size=(n_q, len(SIZES))) < 0.3).astype(np.uint8)
    rest = ((rng.uniform(size=(n_q, len(SIZES))) < 0.5) & (first == 0)).astype(np.uint8)
    rest[1] = 1 - first[1]  # every cell between the two scans
    first[0] = 0  # nothing first: start_max -inf
    union = first | rest
    seg = segments_of(cells, union)
    y = queries(rng, cells, n_q, 0.3)
    for sigma in (np.full(n_q, 1e-6), np.full(n_q, 1e-3), rng.uniform(0.2, 2.0, n_q), np.full(n_q, 1e6)):
        what = f"{backend}{level} sigma={sigma[0]:.1e}"
        p1 = nb.partials_cells(backend, y, sigma, cells, first, 2, level=level, log_w_shift=0.7)
        p2 = nb.partials_cells(backend, y, sigma, cells, rest, 2, level=level, log_w_shift=0.7, start_max=p1.m)
        if backend == "cpp":
            assert np.all(p2.m >= p1.m), what
        p = merge(p1, p2)
        p = type(p)(m=p.m - 0.7, z=p.z, v=p.v, q=p.q, z2=p.z2, top1=p.top1)  # back to the oracle's frame
        check(p, y, cells.points, sigma, cells.log_w, seg, what)
    if backend == "cpp":
        sigma = np.full(n_q, 1e-3)
        assert_bitwise_equal(nb.partials_cells(backend, y, sigma, cells, rest, 2, level=level),
                             nb.partials_cells(backend, y, sigma, cells, rest, 2, level=level,
                                               start_max=np.full(n_q, -np.inf)))  # fmt: skip
        high = nb.partials_cells(backend, y, sigma, cells, rest, 2, level=level, start_max=np.full(n_q, 1e300))
        assert np.all(high.m == 1e300) and np.all(high.z == 0) and np.all(high.top1 == -1)
        with pytest.raises(ValueError, match="start_max"):
            nb.partials_cells(backend, y, sigma, cells, rest, 2, level=level, start_max=np.full(n_q, np.nan))


def test_key_windows_rule(seed):
    """key_windows: the window of (query, cell) is exactly the rows whose keys lie within
    sqrt(2 sigma^2 (log_w_max[c] - floor)) (+ rounding slack) of the query's; a cell without
    mass gets an empty window, a floor of -inf the whole cell, a floor above log_w_max an
    empty one; every row with logit >= floor is inside its window (|<y - x, u>| <= ||y - x||)."""
    rng = np.random.default_rng([seed, 5])
    cells, _, _ = keyed_cell_data(rng, 6, np.float64, [30, 0, 50, 9, 200], True)
    sizes = np.diff(cells.offsets)
    assert abs(np.linalg.norm(cells.key_axis) - 1.0) < 1e-12
    n_q = 12
    y = queries(rng, cells, n_q, 0.5)
    sigma = rng.uniform(0.05, 2.0, n_q)
    probed = np.ones((n_q, sizes.size), np.uint8)
    ky, slack = cells.query_keys(y)
    logits = cells.log_w[None, :] - np.sum((y[:, None, :] - cells.points[None]) ** 2, axis=2) / (2 * sigma[:, None] ** 2)
    floor = np.max(logits, axis=1) - rng.uniform(0.0, 30.0, n_q)
    floor[0] = -np.inf
    floor[1] = 5.0  # above every log_w: no row can reach it
    lo, hi = cells.key_windows(y, sigma, probed, floor)
    q_of, c_of = np.nonzero(probed)
    for k, (i, c) in enumerate(zip(q_of, c_of)):
        a, b = cells.offsets[c], cells.offsets[c + 1]
        assert a <= lo[k] <= hi[k] <= b
        if b == a:
            continue
        top = cells.log_w_max[c]
        if not np.isfinite(top) or floor[i] > top:
            assert lo[k] == hi[k], (i, c)
            continue
        h = np.sqrt(2 * sigma[i] ** 2 * (top - floor[i])) if np.isfinite(floor[i]) else np.inf
        inside = np.abs(cells.row_keys[a:b] - ky[i]) <= h * (1 + 1e-12) + slack
        assert np.array_equal(np.flatnonzero(inside) + a, np.arange(lo[k], hi[k])), (i, c)
        reach = np.flatnonzero(logits[i, a:b] >= floor[i]) + a
        assert np.all((reach >= lo[k]) & (reach < hi[k])), (i, c)


def _binding_args(seed):
    """Positional arguments of partials_cells_f64 up to row_repeats: 3 queries, 3 cells of 10 rows."""
    n, d, n_q, n_cells = 30, 4, 3, 3
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n_q, d))
    offsets = np.array([0, 10, 20, 30], np.int64)
    m, z, q, z2 = (np.empty(n_q) for _ in range(4))
    v = np.empty((n_q, d))
    top1, n_exact = np.empty(n_q, np.int64), np.empty(n_q, np.int64)
    return (y, x, np.zeros(n), None, np.ones(n_q), np.ones((n_q, n_cells), np.uint8), offsets,
            np.zeros((n_cells, d)), np.ones(n_cells), m, z, v, q, z2, top1, n_exact, 0.0, 40.0, 1, 0, None)


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
def test_binding_rejects_partial_key_arguments():
    args = _binding_args(1)
    n, n_q, n_cells = 30, 3, 3
    keys = np.zeros(n)
    with pytest.raises(ValueError, match="all four"):
        nb._core.partials_cells_f64(*args, keys, np.zeros(n_q))
    with pytest.raises(ValueError, match="row_keys"):
        nb._core.partials_cells_f64(*args, np.zeros(n - 1), np.zeros(n_q), np.zeros(n_q), np.zeros(n_cells), 0.0)
    with pytest.raises(ValueError, match="key_slack"):
        nb._core.partials_cells_f64(*args, keys, np.zeros(n_q), np.zeros(n_q), np.zeros(n_cells), -1.0)


def test_long_runs_stay_in_cells_and_break_at_weights():
    """CellSortedData.runs: maximal runs of >= LONG_RUN_ROWS identical rows with equal log_w,
    never across a cell boundary."""
    L = nb.LONG_RUN_ROWS
    a, b = np.ones((1, 3)), np.zeros((1, 3))
    points = np.concatenate([np.repeat(a, L + 5, 0), np.repeat(b, 2 * L, 0), np.repeat(a, L - 1, 0)])
    n = points.shape[0]
    offsets = np.array([0, L + 5 + L, n], np.int64)  # the b run straddles the cell boundary
    cells = nb.CellSortedData.build(points, None, offsets)
    starts, lengths = cells.runs
    assert list(starts) == [0, L + 5, 2 * L + 5] and list(lengths) == [L + 5, L, L]
    log_w = np.zeros(n)
    log_w[10] = -1.0  # breaks the first run into 10 + 1 + (L - 6): no run of L left there
    cells = nb.CellSortedData.build(points, log_w, offsets)
    starts, lengths = cells.runs
    assert list(starts) == [L + 5, 2 * L + 5]
    assert nb.CellSortedData.build(points[: L - 1], None, np.array([0, L - 1])).runs is None


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
def test_long_runs_as_terms_match_the_rows(variant, dtype, weighted, seed):
    """A long run of identical rows taken as one term of multiplicity k (cpp) gives the partials
    of its k rows: log-sum-exp, denoiser, second moment, sum w^2 (n_eff) and top1 as the float64
    oracle, with whole cells and with key windows that cut runs, at small and large sigma."""
    backend, level = variant
    rng = np.random.default_rng([seed, 61, int(weighted), np.dtype(dtype).itemsize])
    d = 8
    sizes = [700, 300, 900]
    points = np.concatenate([rng.normal(size=(s, d)) * 0.5 + 4.0 * c for c, s in enumerate(sizes)])
    points[100:600] = points[100]  # a run of 500 in cell 0
    points[750:790] = points[750]  # a run of 40 in cell 1
    points[1100:1140] = points[1099]  # a run of 41 in cell 2
    log_w = None
    if weighted:
        log_w = np.log(rng.uniform(0.2, 1.0, points.shape[0]))
        log_w[100:600] = np.log(0.7)
        log_w[300] = np.log(0.3)  # splits the long run in two
        log_w[750:790] = -np.inf  # a massless run
        log_w -= log_w.max()
    points = points.astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cells = nb.CellSortedData.build(points, log_w, offsets)
    assert cells.runs is not None and len(cells.runs[0]) >= 2
    n_q = 12
    y = points[[100, 120, 599, 750, 1099, 1120, 5, 1500, 100, 770, 1139, 0]].astype(np.float64)
    y[6:] += 0.05 * rng.normal(size=(6, d))
    y = y.astype(dtype)
    probed = (rng.uniform(size=(n_q, 3)) < 0.7).astype(np.uint8)
    probed[:, 0] = 1
    seg = segments_of(cells, probed)
    for sigma in (np.full(n_q, 1e-3), rng.uniform(0.3, 3.0, n_q)):
        p = nb.partials_cells(backend, y, sigma, cells, probed, 2, level=level)
        check(p, y, cells.points, sigma, cells.log_w, seg, f"{backend}{level} sigma={sigma[0]:.1e}")
    # key windows over the same rows (keyed copy: runs stay runs after the within-cell sort)
    kc, perm = nb.CellSortedData.keyed(points, log_w, np.arange(points.shape[0]), offsets,
                                       points.astype(np.float64).mean(axis=0))  # fmt: skip
    assert kc.runs is not None
    sigma = np.full(n_q, 1e-3)
    seg = segments_of(kc, probed)
    floor = dense_oracle(y, kc.points, sigma, kc.log_w, seg)[0] - nb.skip_log_cut(points.shape[0], dtype)
    p = nb.partials_cells(backend, y, sigma, kc, probed, 2, level=level, floor=floor)
    check(p, y, kc.points, sigma, kc.log_w, seg, f"{backend}{level} keyed")


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("case", ["crosses_cell", "overlap", "descending", "empty", "one_array"])
def test_binding_rejects_bad_runs(case):
    args = _binding_args(2) + (None, None, None, None, 0.0)  # no key windows
    start, length = {"crosses_cell": ([5], [8]), "overlap": ([0, 3], [5, 4]), "descending": ([12, 2], [3, 3]),
                     "empty": ([2], [0]), "one_array": ([2], None)}[case]  # fmt: skip
    start = np.array(start, np.int64)
    length = None if length is None else np.array(length, np.int64)
    with pytest.raises(ValueError, match="run"):
        nb._core.partials_cells_f64(*args, start, length)


# -- key scans (partials_key_scan: cpp) -----------------------------------------------------------

CPP_LEVELS = [lvl for b, lvl in VARIANTS if b == "cpp"]


def scan_data(rng, d, dtype, weighted):
    """Keyed cells whose first axis carries most of the spread (thin key windows): cell 0 holds a
    block of 400 rows on nearly one key (dense keys: windows hold all of them) and a run of 300
    copies of one row; cell 1 is empty, cell 3 a single row."""
    sizes = [1500, 0, 900, 1]
    n = sum(sizes)
    t = np.concatenate([rng.uniform(-30, 30, 1500), rng.uniform(40, 90, 900), [100.0]])
    points = np.column_stack([t, 0.3 * rng.normal(size=(n, d - 1))])
    points[100:500, 0] = 5.0 + 1e-6 * rng.normal(size=400)  # dense keys
    points[600:900] = points[600]  # the run
    log_w = None
    if weighted:
        log_w = np.log(rng.uniform(0.2, 1.0, n))
        log_w[600:900] = np.log(0.5)
        log_w[rng.choice(n, n // 20, replace=False)] = -np.inf
        log_w[600:900] = np.log(0.5)
        log_w -= log_w[np.isfinite(log_w)].max()
    points = points.astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cells, perm = nb.CellSortedData.keyed(points, log_w, np.arange(n), offsets, points.astype(np.float64).mean(axis=0))
    return cells


def scan_queries(rng, cells, n_q, scale):
    pts = cells.points.astype(np.float64)
    y = pts[rng.integers(0, pts.shape[0], n_q)] + scale * rng.normal(size=(n_q, pts.shape[1]))
    run = np.flatnonzero(np.all(pts == pts[cells.runs[0][0]], axis=1))[0] if cells.runs is not None else 0
    y[0] = pts[run]  # on the run
    y[1] = pts[run] + 0.5 * scale  # next to it
    y[2] = pts[np.argmin(np.abs(pts[:, 0] - 5.0))] + scale  # in the dense keys
    y[3] = pts[7]  # exactly on a row
    y[-1] = pts.mean(axis=0) + 1e3  # far from everything
    return y.astype(cells.points.dtype)


def own_cells(cells, y):
    """Each query's cell: the non-empty cell whose mean is nearest (any cell is a valid input)."""
    full = np.flatnonzero(np.diff(cells.offsets) > 0)
    d2 = np.sum((y[:, None, :].astype(np.float64) - cells.centers[full][None].astype(np.float64)) ** 2, axis=2)
    return full[np.argmin(d2, axis=1)]


def cell_segments(cells, cell):
    offs = cells.offsets
    return nb.Segments(np.arange(cell.size + 1, dtype=np.int64), offs[cell], offs[cell + 1] - offs[cell])


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("level", CPP_LEVELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("d", [1, 8, 24])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
def test_key_scan_matches_the_cell(level, dtype, d, weighted, seed):
    """A complete key scan gives the partial of the whole cell (float64 oracle; runs as one term,
    rows below max - log_cut unread), from sigma = 1e-5 (a few rows read) to 1e3 (all).  With
    d >= SKETCH_MIN_DIM the rows' sketches keep most rows of a window unread."""
    rng = np.random.default_rng([seed, d, int(weighted), np.dtype(dtype).itemsize, 83])
    cells = scan_data(rng, d, dtype, weighted)
    assert (cells.row_sketch is not None) == (d >= nb.SKETCH_MIN_DIM)
    n_q = 40
    y = scan_queries(rng, cells, n_q, 1e-3)
    cell = own_cells(cells, y)
    cell[5] = 1  # the empty cell: an empty partial
    cell[6] = 3  # a one-row cell
    seg = cell_segments(cells, cell)
    terms_at = {}
    for s in (1e-5, 1e-3, 0.1, 3.0, 1e3):
        sigma = np.full(n_q, s) if s != 0.1 else rng.uniform(0.05, 0.2, n_q)
        p, done, terms = nb.partials_key_scan(y, sigma, cells, nb.cell_lists(cell), 2, max_terms=10**6, max_visits=10**6, level=level)
        what = f"level {level} sigma={s:g}"
        assert done.all(), what
        check(p, y, cells.points, sigma, cells.log_w, seg, what)
        assert np.all(terms <= seg.length) and terms[5] == 0, what
        terms_at[s] = int(terms.sum())
    if d > 1:
        assert terms_at[1e-5] < 0.15 * seg.length.sum(), terms_at  # the dense-key block is read whole
    if cells.row_sketch is not None:  # the sketch leaves the dense-key block unread
        assert terms_at[1e-3] < 0.05 * seg.length.sum(), terms_at
    # the runs are one term: at 1e3 every row is a term, but each run of k rows counts once
    starts, lengths = cells.runs
    in_cell = (cells.offsets[cell][:, None] <= starts[None]) & (starts[None] < cells.offsets[cell + 1][:, None])
    assert lengths.max() >= 300 and terms_at[1e3] == int(seg.length.sum() - np.sum(in_cell * (lengths - 1)[None]))


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("level", CPP_LEVELS)
@pytest.mark.parametrize("d", [8, 24])
def test_key_scan_budgets(level, d, seed):
    """A scan that runs out of terms or visits says so (complete = False) and its max is a lower
    bound on the cell's (the floor it gives a windowed scan keeps every term); where it says
    complete, it is the cell's partial."""
    rng = np.random.default_rng([seed, d, 89])
    cells = scan_data(rng, d, np.float64, True)
    n_q = 40
    y = scan_queries(rng, cells, n_q, 1e-3)
    cell = own_cells(cells, y)
    seg = cell_segments(cells, cell)
    for s in (1e-4, 0.5):
        sigma = np.full(n_q, s)
        m_true = dense_oracle(y, cells.points, sigma, cells.log_w, seg)[0]
        for max_terms, max_visits in ((1, 1), (3, 10**6), (4, 5), (2, 40)):
            p, done, terms = nb.partials_key_scan(y, sigma, cells, nb.cell_lists(cell), 2, max_terms=max_terms,
                                                  max_visits=max_visits, level=level)  # fmt: skip
            what = f"level {level} sigma={s} budget={max_terms},{max_visits}"
            assert np.all(terms <= max_terms), what
            assert np.all(p.m <= m_true + 1e-12 * (1.0 + np.abs(m_true))), what
            if done.any():
                check(take(p, done), y[done], cells.points, sigma[done], cells.log_w,
                      cell_segments(cells, cell[done]), what)  # fmt: skip
            if s == 0.5:
                assert not done.all(), what  # every row matters at this sigma: the budgets bind


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
def test_sketch_bounds(seed):
    """The sketch axes and the key axis are orthonormal, and the slack of query_sketch covers
    the rounding of both sides: |row sketch - exact| + |query sketch - exact| <= slack, exact
    projections in extended precision."""
    rng = np.random.default_rng([seed, 97])
    for dtype, scale in ((np.float32, 1.0), (np.float64, 1e3)):
        cells = scan_data(rng, 40, dtype, False)
        basis = np.vstack([cells.key_axis, cells.sketch_axes])
        np.testing.assert_allclose(basis @ basis.T, np.eye(nb.SKETCH_AXES + 1), atol=1e-13)
        y = (scan_queries(rng, cells, 30, 1.0).astype(np.float64) * scale).astype(dtype)
        _, _, ys, slack = cells.query_frame(y)
        axes = cells.sketch_axes.astype(np.longdouble)
        origin = cells.key_origin.astype(np.longdouble)
        exact_rows = (cells.points.astype(np.longdouble) - origin) @ axes.T
        exact_y = (y.astype(np.longdouble) - origin) @ axes.T
        err = np.max(np.abs(cells.row_sketch - exact_rows)) + np.max(np.abs(ys - exact_y))
        assert 0 < err <= slack, (err, slack)


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("case", ["range", "reversed", "offsets", "budget", "no_terms", "sketch_shape", "one_sketch",
                                  "sketch_slack", "log_cut", "floor", "runs"])
def test_binding_rejects_bad_key_scans(case):
    n, d, n_q = 30, 16, 3
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n_q, d))
    offsets, lo, hi = np.arange(n_q + 1, dtype=np.int64), np.zeros(n_q, np.int64), np.full(n_q, n, np.int64)
    floor = None
    m, z, q, z2 = (np.empty(n_q) for _ in range(4))
    v = np.empty((n_q, d))
    top1, terms, done = np.empty(n_q, np.int64), np.empty(n_q, np.int64), np.empty(n_q, np.uint8)
    sketch = [np.zeros((n, nb.SKETCH_AXES), np.float32), np.zeros((n_q, nb.SKETCH_AXES)), 0.0]
    budget, log_cut = [4, 8], 30.0
    if case == "range":
        hi[1] = n + 1
    elif case == "reversed":
        lo[2] = 5
        hi[2] = 4
    elif case == "budget":
        budget = [8, 4]
    elif case == "no_terms":
        budget = [0, 4]
    elif case == "sketch_shape":
        sketch[0] = np.zeros((n, nb.SKETCH_AXES - 1), np.float32)
    elif case == "one_sketch":
        sketch[1] = None
    elif case == "sketch_slack":
        sketch[2] = np.nan
    elif case == "log_cut":
        log_cut = 0.0
    elif case == "offsets":
        offsets[-1] = n_q + 1
    elif case == "floor":
        floor = np.full(n_q, np.nan)
    runs = [None, None]
    if case == "runs":  # overlapping
        runs = [np.array([0, 3], np.int64), np.array([5, 4], np.int64)]
    match = {"range": "range_lo, range_hi", "reversed": "range_lo, range_hi", "budget": "max_terms, max_visits",
             "offsets": "range_offsets", "floor": "floor", "runs": "disjoint",
             "no_terms": "max_terms", "sketch_shape": "row_sketch", "one_sketch": "give both",
             "sketch_slack": "sketch_slack", "log_cut": "log_cut"}[case]  # fmt: skip
    with pytest.raises(ValueError, match=match):
        nb._core.partials_key_scan_f64(y, x, None, np.ones(n_q), offsets, lo, hi, np.zeros(n_q),
                                       np.sort(rng.normal(size=n)), np.zeros(n_q), floor, 0.0, *runs, *sketch, m,
                                       z, v, q, z2, top1, terms, done, log_cut, *budget, 1, 0)  # fmt: skip


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("level", CPP_LEVELS)
@pytest.mark.parametrize("d", [8, 24])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
def test_key_scan_over_several_cells_from_a_floor(level, d, weighted, seed):
    """Several cells per query (a mask), the max carried from cell to cell, and a caller's floor
    (the max over all the cells - log_cut, as a merged partial gives): the partial of the marked
    cells.  A floor above every logit reads nothing (an empty partial, complete)."""
    rng = np.random.default_rng([seed, d, int(weighted), 101])
    cells = scan_data(rng, d, np.float64, weighted)
    n_q = 30
    y = scan_queries(rng, cells, n_q, 1e-3)
    marked = (rng.uniform(size=(n_q, 4)) < 0.6).astype(np.uint8)
    marked[:, 1] = 1  # the empty cell too
    marked[3] = 0  # no cell at all: the empty partial
    seg = segments_of(cells, marked)
    log_cut = nb.skip_log_cut(cells.points.shape[0], np.float64)
    for s in (1e-4, 0.05, 2.0):
        sigma = np.full(n_q, s)
        m_true = dense_oracle(y, cells.points, sigma, cells.log_w, seg)[0]
        for floor in (None, m_true - log_cut):
            p, done, terms = nb.partials_key_scan(y, sigma, cells, nb.cell_lists(marked), 2, max_terms=10**6,
                                                  max_visits=10**6, floor=floor, level=level)  # fmt: skip
            assert done.all() and terms[3] == 0
            check(p, y, cells.points, sigma, cells.log_w, seg, f"level {level} sigma={s} floor={floor is not None}")
        p, done, terms = nb.partials_key_scan(y, sigma, cells, nb.cell_lists(marked), 2, max_terms=10**6,
                                              max_visits=10**6, floor=np.full(n_q, 1e300), level=level)  # fmt: skip
        assert done.all() and np.all(np.isneginf(p.m)) and np.all(p.z == 0) and not terms.any()


@given(st.integers(0, 40), st.integers(0, 37), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1), st.booleans())
@settings(max_examples=60, deadline=None)
def test_marked_pairs_is_nonzero(rows, cols, density, seed, as_bool):
    """marked_pairs (the probed-mask reader of the key scans) equals np.nonzero, any shape."""
    mask = (np.random.default_rng(seed).uniform(size=(rows, cols)) < density).astype(bool if as_bool else np.uint8)
    q, c = nb.marked_pairs(mask)
    q_ref, c_ref = np.nonzero(mask)
    assert q.dtype == np.int64 and np.array_equal(q, q_ref) and np.array_equal(c, c_ref)
