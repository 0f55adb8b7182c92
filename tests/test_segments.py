"""partials_segments: every backend (cpp at each compiled SIMD level, numba, reference) against a
float64 dense reference over the same rows, plus the binding's validation of segment arrays."""
from __future__ import annotations

import numpy as np
import pytest

import nnscore as ns
from nnscore import backends as nb
from nnscore.backends.reference import partials_dense_reference

U64 = 2.0**-53


def _variants():
    out = [("numba", None), ("reference", None)]
    if ns.HAS_CORE:
        out = [("cpp", lvl) for lvl in range(int(nb._core.build_info()["simd_detected_index"]) + 1)] + out
    return [v for v in out if v[0] in ns.available_backends()]


VARIANTS = _variants()
VIDS = [f"{b}{'' if lvl is None else lvl}" for b, lvl in VARIANTS]


def random_segments(rng, n, n_q):
    """CSR segments: empty queries, empty segments, overlapping ranges, length-1 ids."""
    offsets, start, length = [0], [], []
    for i in range(n_q):
        kind = i % 5
        if kind == 0:
            segs = []  # empty query
        elif kind == 1:
            ids = rng.integers(0, n, rng.integers(1, 12))  # length-1 segments (kNN ids)
            segs = [(int(j), 1) for j in ids]
        else:
            segs = []
            for _ in range(rng.integers(1, 5)):
                s = int(rng.integers(0, n))
                segs.append((s, int(rng.integers(0, n - s + 1))))  # may be empty; may overlap
            if kind == 3:
                segs.append(segs[0])  # exact overlap: the rows count twice
        offsets.append(offsets[-1] + len(segs))
        for s, ln in segs:
            start.append(s)
            length.append(ln)
    return nb.Segments(np.asarray(offsets, np.int64), np.asarray(start, np.int64), np.asarray(length, np.int64))


def dense_oracle(y, points, sigma, log_w, seg):
    """Per query: partials_dense_reference over the gathered rows (float64, multiplicities kept)."""
    n_q, d = y.shape
    m, z, q, z2 = np.full(n_q, -np.inf), np.zeros(n_q), np.zeros(n_q), np.zeros(n_q)
    v, top_logit = np.zeros((n_q, d)), np.full(n_q, -np.inf)
    for i in range(n_q):
        rows = [np.arange(seg.start[g], seg.start[g] + seg.length[g]) for g in range(seg.offsets[i], seg.offsets[i + 1])]
        rows = np.concatenate(rows + [np.zeros(0, np.int64)]).astype(np.int64)
        if log_w is not None:
            rows = rows[log_w[rows] > -np.inf]
        if rows.size == 0:
            continue
        p = partials_dense_reference(y[i : i + 1].astype(np.float64), points[rows].astype(np.float64), sigma[i : i + 1],
                                     None if log_w is None else log_w[rows])
        m[i], z[i], q[i], z2[i], v[i] = p.m[0], p.z[0], p.q[0], p.z2[0], p.v[0]
        top_logit[i] = p.m[0]
    return m, z, v, q, z2


def logits_of(y, points, sigma, log_w, idx):
    diff = points[idx].astype(np.float64) - y.astype(np.float64)
    lw = 0.0 if log_w is None else log_w[idx]
    return lw - np.dot(diff, diff) / (2.0 * sigma**2)


def check(p, y, points, sigma, log_w, seg, what):
    m, z, v, q, z2 = dense_oracle(y, points, sigma, log_w, seg)
    empty = ~np.isfinite(m)
    assert np.all(np.isneginf(p.m[empty])) and np.all(p.z[empty] == 0) and np.all(p.top1[empty] == -1), what
    assert np.all(p.v[empty] == 0), what
    ok = ~empty
    assert not np.any(np.isnan(p.m)) and not np.any(np.isnan(p.v)) and not np.any(np.isnan(p.z)), what
    # float64 difference form on both sides, summation orders differ: n_terms + d roundings of
    # each term (relative), i.e. ~1e-12 relative for these sizes.
    n_terms = seg.counts()[ok].astype(np.float64)
    rel = 256.0 * U64 * (n_terms + y.shape[1] + 8)
    lse, lse_ref = p.m[ok] + np.log(p.z[ok]), m[ok] + np.log(z[ok])
    np.testing.assert_array_less(np.abs(lse - lse_ref), rel * (1.0 + np.abs(lse_ref)), err_msg=what)
    dy, dy_ref = p.v[ok] / p.z[ok, None], v[ok] / z[ok, None]
    ys = np.linalg.norm(y[ok].astype(np.float64), axis=1)
    xs = np.max(np.linalg.norm(points.astype(np.float64), axis=1))
    np.testing.assert_array_less(np.linalg.norm(dy - dy_ref, axis=1), rel * (ys + xs + 1.0), err_msg=what)
    np.testing.assert_array_less(np.abs(p.q[ok] / p.z[ok] - q[ok] / z[ok]), rel * (ys + xs + 1.0) ** 2, err_msg=what)
    np.testing.assert_array_less(np.abs(p.z[ok] ** 2 / p.z2[ok] - z[ok] ** 2 / z2[ok]), rel * z[ok] ** 2 / z2[ok],
                                 err_msg=what)
    # top1 indexes the points and carries the max logit (ties allowed)
    for i in np.flatnonzero(ok):
        t = int(p.top1[i])
        assert 0 <= t < points.shape[0], what
        li = logits_of(y[i], points, sigma[i], log_w, t)
        assert abs(li - m[i]) <= rel[0] * (1.0 + abs(m[i])) * 4, (what, i, li, m[i])


def run(backend, level, y, sigma, points, log_w, seg):
    return nb.partials_segments(backend, y, sigma, points, log_w, seg, 2, level=level)


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("d", [1, 3, 17, 64, 130])
@pytest.mark.parametrize("weighted", [False, True], ids=["unif", "weighted"])
def test_segments_match_dense_reference(variant, dtype, d, weighted, seed):
    backend, level = variant
    rng = np.random.default_rng([seed, d, int(weighted), np.dtype(dtype).itemsize])
    n, n_q = 200, 23
    points = (rng.normal(size=(n, d)) + 1.5).astype(dtype)
    log_w = None
    if weighted:
        log_w = np.log(rng.uniform(0.1, 1.0, n))
        log_w[rng.choice(n, 40, replace=False)] = -np.inf  # zero prior
        log_w -= log_w[np.isfinite(log_w)].max()
    seg = random_segments(rng, n, n_q)
    y = (points[rng.integers(0, n, n_q)].astype(np.float64) + 0.3 * rng.normal(size=(n_q, d))).astype(dtype)
    y[-2] = points[seg.start[0] if seg.start.size else 0]  # exactly on a row
    for sigma in (np.full(n_q, 1e-6), rng.uniform(0.2, 2.0, n_q), np.full(n_q, 1e6)):
        p = run(backend, level, y, sigma, points, log_w, seg)
        check(p, y, points, sigma, log_w, seg, f"{backend}{level} sigma={sigma[0]:.1e}")


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tiny_sigma_is_nearest_row_and_huge_sigma_is_mean(variant, dtype, seed):
    backend, level = variant
    rng = np.random.default_rng([seed, 77])
    n, d, k = 300, 17, 8
    points = (rng.normal(size=(n, d)) * 3.0 + 10.0).astype(dtype)
    ids = np.stack([rng.choice(n, k, replace=False) for _ in range(12)])  # distinct: the limit has weight 1
    y = (points[ids[:, 0]].astype(np.float64) + 0.01 * rng.normal(size=(12, d))).astype(dtype)
    seg = nb.Segments.from_ids(ids)
    p = run(backend, level, y, np.full(12, 1e-6), points, None, seg)
    # logits ~ -1e10: no underflow to NaN; the limit is the nearest listed row, weight 1
    assert np.all(np.isfinite(p.m)) and np.all(np.isfinite(p.v)) and np.all(np.isfinite(p.z))
    diff = points[ids].astype(np.float64) - y.astype(np.float64)[:, None, :]
    nearest = ids[np.arange(12), np.argmin(np.einsum("mkd,mkd->mk", diff, diff), axis=1)]
    assert np.array_equal(p.top1, nearest)
    np.testing.assert_allclose(p.z, 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.v / p.z[:, None], points[nearest].astype(np.float64) - y, rtol=0, atol=1e-12 * 20)
    # huge sigma: uniform weights over the listed rows (with multiplicity)
    p = run(backend, level, y, np.full(12, 1e8), points, None, seg)
    mean = points[ids].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(p.z, k, rtol=1e-12)
    np.testing.assert_allclose(p.v / p.z[:, None], mean - y, rtol=0, atol=1e-12 * 20 * k)
    assert np.all(np.isin(p.top1, ids.ravel()))


def test_backends_agree_with_log_w_shift_and_mass(seed):
    rng = np.random.default_rng([seed, 5])
    points = rng.normal(size=(100, 3))
    log_w = np.log(rng.uniform(0.1, 1.0, 100))
    seg = random_segments(rng, 100, 10)
    y = rng.normal(size=(10, 3))
    sigma = np.full(10, 0.7)
    outs = [nb.partials_segments(b, y, sigma, points, log_w, seg, 1, log_w_shift=2.5, log_mass=3.0, level=lvl)
            for b, lvl in VARIANTS]
    for p in outs:
        assert p.log_mass == 3.0
        ok = np.isfinite(outs[-1].m)
        np.testing.assert_allclose(p.m[ok], outs[-1].m[ok], rtol=1e-13, atol=0)
        assert np.all(np.isneginf(p.m[~ok]))


@pytest.mark.skipif(not ns.HAS_CORE, reason="needs the compiled core")
@pytest.mark.parametrize("case", ["offset0", "decreasing", "past_end", "negative_start", "negative_len",
                                  "last_offset"])
def test_binding_rejects_bad_segments(case):
    rng = np.random.default_rng(0)
    n, d, n_q = 50, 4, 3
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n_q, d))
    sigma = np.ones(n_q)
    offsets = np.array([0, 1, 2, 3], np.int64)
    start = np.array([0, 10, 20], np.int64)
    length = np.array([5, 5, 5], np.int64)
    if case == "offset0":
        offsets = np.array([1, 1, 2, 3], np.int64)
    elif case == "decreasing":
        offsets = np.array([0, 2, 1, 3], np.int64)
    elif case == "past_end":
        start = np.array([0, 10, 48], np.int64)
    elif case == "negative_start":
        start = np.array([0, -1, 20], np.int64)
    elif case == "negative_len":
        length = np.array([5, -2, 5], np.int64)
    elif case == "last_offset":
        offsets = np.array([0, 1, 2, 4], np.int64)  # past the segment arrays
    m, z, q, z2 = (np.empty(n_q) for _ in range(4))
    v = np.empty((n_q, d))
    top1 = np.empty(n_q, np.int64)
    with pytest.raises(ValueError):
        nb._core.partials_segments_f64(y, x, None, sigma, offsets, start, length, m, z, v, q, z2, top1,
                                       float(np.log(n)) + 40.0, 1, 0)
    # the well-formed call succeeds
    nb._core.partials_segments_f64(y, x, None, sigma, np.array([0, 1, 2, 3], np.int64), np.array([0, 10, 20], np.int64),
                                   np.array([5, 5, 5], np.int64), m, z, v, q, z2, top1, float(np.log(n)) + 40.0, 1, 0)
    assert np.all(np.isfinite(m))
