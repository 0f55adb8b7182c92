"""TrainingIndex: exact flat search, certified radii (flat / IVF), HNSW flag, validation, save/load."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from nnscore.index import Neighbours, TrainingIndex, fp_margin_coefficient  # noqa: E402


def clustered(n, d, seed, n_clusters=12, spread=0.05, offset=3.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    lab = rng.integers(0, n_clusters, size=n)
    x = centers[lab] + spread * rng.normal(size=(n, d)) + offset
    return x.astype(dtype)


def queries(x, m, seed):
    """Mix of exact train rows, near rows, cluster-between and far queries."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    q = [x[rng.integers(0, n, m // 4)].astype(np.float64)]
    q.append(x[rng.integers(0, n, m // 4)] + 1e-3 * rng.normal(size=(m // 4, d)))
    q.append(0.5 * (x[rng.integers(0, n, m // 4)] + x[rng.integers(0, n, m // 4)]))
    rest = m - 3 * (m // 4)
    q.append(x.mean(0) + 10.0 * rng.normal(size=(rest, d)))
    return np.concatenate(q)


def exact_sq(q, x):
    diff = q[:, None, :].astype(np.float64) - x[None, :, :].astype(np.float64)
    return np.einsum("mnd,mnd->mn", diff, diff)


def count_violations(res: Neighbours, q, x):
    d2 = exact_sq(q, x)
    mask = np.ones_like(d2, dtype=bool)
    np.put_along_axis(mask, res.ids, False, axis=1)
    excluded_min = np.where(mask, d2, np.inf).min(axis=1)
    return int(np.sum(excluded_min < res.r_k))


def test_flat_equals_brute_force():
    x = clustered(1000, 16, 0)
    q = queries(x, 60, 1)
    idx = TrainingIndex(x, kind="flat")
    assert idx.kind == "flat" and idx.certified
    res = idx.search(q, 10)
    assert res.ids.dtype == np.int64 and res.ids.shape == (60, 10)
    assert res.sqdist.dtype == np.float64 and res.r_k.shape == (60,)
    d2 = exact_sq(q, x)
    ref = np.sort(d2, axis=1)[:, :10]
    np.testing.assert_allclose(res.sqdist, ref, rtol=1e-12, atol=0)
    # ids up to ties: the returned ids carry the reported distances exactly
    np.testing.assert_allclose(np.take_along_axis(d2, res.ids, axis=1), res.sqdist, rtol=1e-12, atol=0)
    assert np.all(np.diff(res.sqdist, axis=1) >= 0)
    assert np.all([len(set(r)) == 10 for r in res.ids])
    # the certified radius sits just below the k-th distance
    assert np.all(res.r_k <= res.sqdist[:, -1])
    assert np.all(res.r_k > res.sqdist[:, -1] - 1e-3 * (1 + res.sqdist[:, -1]))


def test_auto_is_flat_for_small_n_and_1d_query():
    x = clustered(300, 3, 2)
    idx = TrainingIndex(x)
    assert idx.kind == "flat"
    res = idx.search(x[5], 1)
    assert res.ids.shape == (1, 1) and res.ids[0, 0] == 5 and res.sqdist[0, 0] == 0.0


@pytest.mark.parametrize("d", [2, 64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_flat_certificate_zero_violations(d, dtype):
    x = clustered(1200, d, 10 + d, dtype=dtype)
    q = queries(x, 100, 20 + d)
    idx = TrainingIndex(x, kind="flat")
    cases = 0
    for k in (1, 2, 5, 17, 60):
        res = idx.search(q, k)
        assert count_violations(res, q, x) == 0
        assert np.all(np.isfinite(res.r_k))
        cases += q.shape[0]
    assert cases == 500  # x 4 parametrisations = 2000 query-k cases


def test_flat_certificate_adversarial_ties():
    """Points on a sphere around a far-off-centre query: faiss's float32 ranking is noise-level."""
    rng = np.random.default_rng(5)
    d, n = 32, 2000
    u = rng.normal(size=(n, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    centre = np.full(d, 50.0)
    x = centre + u * (1.0 + 1e-9 * rng.normal(size=(n, 1)))
    q = centre + 1e-7 * rng.normal(size=(40, d))
    idx = TrainingIndex(x, kind="flat")
    naive = 0
    for k in (1, 10, 100):
        res = idx.search(q, k)
        assert count_violations(res, q, x) == 0
        uncorrected = Neighbours(res.ids, res.sqdist, res.sqdist[:, -1], res.k_used, True)
        naive += count_violations(uncorrected, q, x)
    assert naive > 0  # the data do stress the float32 ranking: r_k = d_(k)^2 alone would fail
    # and without centring (wrapping a raw faiss index): the margin grows but still holds
    raw = faiss.IndexFlatL2(d)
    raw.add(x.astype(np.float32))
    idx2 = TrainingIndex.from_faiss(raw, x.astype(np.float32))
    res = idx2.search(q, 10)
    assert count_violations(res, q, x.astype(np.float32)) == 0


def test_margin_formula():
    u = 2.0**-24
    for d in (1, 64, 4096):
        c = fp_margin_coefficient(d)
        g = (d + 2) * u / (1 - (d + 2) * u)
        assert c >= 2 * g + 4 * u
        assert c <= 1.01 * (2 * g + 4 * u) + 1e-12


@pytest.mark.parametrize("d", [2, 64])
def test_ivf_certificate_and_full_probe(d):
    x = clustered(3000, d, 30 + d)
    q = queries(x, 100, 40 + d)
    idx = TrainingIndex(x, kind="ivf", nlist=32, nprobe=2, rng=0)
    assert idx.kind == "ivf" and idx.certified and idx.nlist == 32 and idx.nprobe == 2
    for nprobe in (1, 2, 5):
        for k in (1, 8, 40):
            res = idx.search(q, k, nprobe=nprobe)
            assert count_violations(res, q, x) == 0
            assert np.all(res.ids >= 0)
            assert np.all(res.r_k <= res.sqdist[:, -1])
    # all cells probed: identical to flat
    flat = TrainingIndex(x, kind="flat")
    a = idx.search(q, 12, nprobe=32)
    b = flat.search(q, 12)
    np.testing.assert_allclose(a.sqdist, b.sqdist, rtol=1e-12, atol=0)
    np.testing.assert_allclose(a.r_k, b.r_k, rtol=1e-12, atol=0)
    assert np.array_equal(a.ids, b.ids) or np.allclose(
        np.take_along_axis(exact_sq(q, x), a.ids, axis=1), b.sqdist, rtol=1e-12, atol=0)


def test_ivf_defaults_and_seed():
    x = clustered(1600, 4, 21)
    q = queries(x, 20, 22)
    a = TrainingIndex(x, kind="ivf", rng=3)
    b = TrainingIndex(x, kind="ivf", rng=3)
    assert a.nlist == 160 and a.nprobe == 13  # round(4 sqrt(N)), ceil(sqrt(nlist))
    ra, rb = a.search(q, 6), b.search(q, 6)
    assert np.array_equal(ra.ids, rb.ids) and np.array_equal(ra.r_k, rb.r_k)
    assert count_violations(ra, q, x) == 0


def test_ivf_underfilled_probe_is_exact():
    """k above the probed cells' population: faiss pads with -1; we never index with it."""
    x = clustered(2000, 8, 7)
    idx = TrainingIndex(x, kind="ivf", nlist=40, nprobe=1, rng=1)
    q = queries(x, 20, 8)
    res = idx.search(q, 400)
    ref = np.sort(exact_sq(q, x), axis=1)[:, :400]
    assert np.all(res.ids >= 0)
    assert count_violations(res, q, x) == 0
    # 40 cells of ~50 rows < 400: every row is padded by faiss and re-solved exactly
    np.testing.assert_allclose(res.sqdist, ref, rtol=1e-12, atol=0)
    assert np.all(np.isfinite(res.r_k))


def test_hnsw_uncertified():
    x = clustered(800, 8, 3)
    q = queries(x, 20, 4)
    idx = TrainingIndex(x, kind="hnsw", hnsw_m=16)
    assert idx.certified is False
    res = idx.search(q, 5)
    assert res.certified is False
    assert np.all(np.isnan(res.r_k))
    assert res.ids.shape == (20, 5) and np.all(res.ids >= 0) and np.all(res.ids < 800)
    np.testing.assert_allclose(np.take_along_axis(exact_sq(q, x), res.ids, axis=1), res.sqdist, rtol=1e-12)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_k_greater_than_n_clamps(kind):
    x = clustered(12, 4, 9)
    q = queries(x, 8, 10)
    kw = {"nlist": 3, "nprobe": 1, "rng": 0} if kind == "ivf" else {}
    idx = TrainingIndex(x, kind=kind, **kw)
    res = idx.search(q, 50)
    assert res.k_used == 12 and res.ids.shape == (8, 12)
    assert all(sorted(r) == list(range(12)) for r in res.ids)
    np.testing.assert_allclose(res.sqdist, np.sort(exact_sq(q, x), axis=1), rtol=1e-12, atol=0)
    if kind == "hnsw":
        assert np.all(np.isnan(res.r_k))
    else:
        assert np.all(np.isinf(res.r_k))


def test_bad_inputs():
    x = clustered(200, 5, 11)
    idx = TrainingIndex(x, kind="flat")
    for k in (0, -3):
        with pytest.raises(ValueError, match="k"):
            idx.search(x[:3], k)
    with pytest.raises(ValueError, match="k"):
        idx.search(x[:3], 2.5)
    bad = x[:4].copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="y"):
        idx.search(bad, 3)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="y"):
        idx.search(bad, 3)
    with pytest.raises(ValueError, match="y"):
        idx.search(np.zeros((3, 6)), 3)
    with pytest.raises(ValueError, match="metric"):
        TrainingIndex(x, metric="ip")
    with pytest.raises(ValueError, match="kind"):
        TrainingIndex(x, kind="lsh")
    nan_train = x.copy()
    nan_train[0, 0] = np.nan
    with pytest.raises(ValueError, match="train"):
        TrainingIndex(nan_train)
    # faiss index built on other data / wrong size / wrong d
    other = faiss.IndexFlatL2(5)
    other.add((x + 1e-3).astype(np.float32))
    with pytest.raises(ValueError, match="index"):
        TrainingIndex.from_faiss(other, x)
    short = faiss.IndexFlatL2(5)
    short.add(x[:100].astype(np.float32))
    with pytest.raises(ValueError, match="index"):
        TrainingIndex.from_faiss(short, x)
    with pytest.raises(ValueError, match="index"):
        TrainingIndex.from_faiss(other, x[:, :4])
    with pytest.raises(ValueError, match="index"):
        TrainingIndex.from_faiss(faiss.IndexFlatIP(5), x)


def test_from_faiss_matches_own_build():
    x = clustered(500, 6, 12)
    q = queries(x, 30, 13)
    raw = faiss.IndexFlatL2(6)
    raw.add(x.astype(np.float32))
    wrapped = TrainingIndex.from_faiss(raw, x.astype(np.float32))
    res = wrapped.search(q, 7)
    np.testing.assert_allclose(res.sqdist, np.sort(exact_sq(q, x.astype(np.float32)), axis=1)[:, :7], rtol=1e-12)
    assert count_violations(res, q, x.astype(np.float32)) == 0
    quant = faiss.IndexFlatL2(6)
    ivf = faiss.IndexIVFFlat(quant, 6, 8)
    ivf.train(x.astype(np.float32))
    ivf.add(x.astype(np.float32))
    ivf.nprobe = 2
    w2 = TrainingIndex.from_faiss(ivf, x.astype(np.float32))
    assert w2.kind == "ivf" and w2.nprobe == 2
    assert count_violations(w2.search(q, 7), q, x.astype(np.float32)) == 0


def test_threads_restored():
    x = clustered(300, 4, 14)
    before = faiss.omp_get_max_threads()
    idx = TrainingIndex(x, kind="flat", n_threads=1)
    idx.search(x[:50], 3)
    assert faiss.omp_get_max_threads() == before


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    x = clustered(1500, 10, 15)
    q = queries(x, 40, 16)
    kw = {"nlist": 16, "nprobe": 3, "rng": 2} if kind == "ivf" else {}
    idx = TrainingIndex(x, kind=kind, **kw)
    idx.save(tmp_path / "ix")
    back = TrainingIndex.load(tmp_path / "ix")
    assert back.kind == kind and back.certified == idx.certified and back.nprobe == idx.nprobe
    a, b = idx.search(q, 9), back.search(q, 9)
    assert np.array_equal(a.ids, b.ids)
    assert np.array_equal(a.sqdist, b.sqdist)
    np.testing.assert_array_equal(a.r_k, b.r_k)


def test_load_rejects_corrupt_files(tmp_path):
    x = clustered(400, 6, 17)
    idx = TrainingIndex(x, kind="flat")
    base = tmp_path / "ix"
    idx.save(base)
    ipath, mpath = base / "index.faiss", base / "meta.npz"
    good_index, good_meta = ipath.read_bytes(), mpath.read_bytes()

    def restore():
        ipath.write_bytes(good_index)
        mpath.write_bytes(good_meta)

    ipath.write_bytes(good_index[: len(good_index) // 2])  # truncated faiss file
    with pytest.raises(ValueError):
        TrainingIndex.load(base)
    restore()
    ipath.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError):
        TrainingIndex.load(base)
    restore()
    mpath.write_bytes(good_meta[:200])  # truncated zip
    with pytest.raises(ValueError):
        TrainingIndex.load(base)
    restore()
    # inconsistent: metadata from a different data set of the same shape
    TrainingIndex(clustered(400, 6, 99), kind="flat").save(tmp_path / "other")
    mpath.write_bytes((tmp_path / "other" / "meta.npz").read_bytes())
    with pytest.raises(ValueError, match="path"):
        TrainingIndex.load(base)
    restore()
    # header says a larger train than the faiss index holds
    np.savez(mpath, format_version=np.int64(1), kind=np.array("flat"), metric=np.array("l2"),
             shape=np.array([500, 6], dtype=np.int64), center=np.zeros(6), train=np.zeros((500, 6)))
    with pytest.raises(ValueError, match="path"):
        TrainingIndex.load(base)
    # wrong dtype for train / header-size mismatch
    np.savez(mpath, format_version=np.int64(1), kind=np.array("flat"), metric=np.array("l2"),
             shape=np.array([400, 6], dtype=np.int64), center=np.zeros(6), train=np.zeros((400, 6), dtype=np.int32))
    with pytest.raises(ValueError, match="train"):
        TrainingIndex.load(base)
    np.savez(mpath, format_version=np.int64(1), kind=np.array("flat"), metric=np.array("l2"),
             shape=np.array([10**12, 6], dtype=np.int64), center=np.zeros(6), train=np.zeros((400, 6)))
    with pytest.raises(ValueError, match="train"):
        TrainingIndex.load(base)
    # a member whose data is shorter than its header claims
    restore()
    with zipfile.ZipFile(mpath) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["train.npy"] = members["train.npy"][:-8]
    with zipfile.ZipFile(mpath, "w") as zf:
        for n_, data in members.items():
            zf.writestr(n_, data)
    with pytest.raises(ValueError, match="train"):
        TrainingIndex.load(base)
    restore()
    os.remove(mpath)
    with pytest.raises(ValueError):
        TrainingIndex.load(base)
    restore()
    assert np.array_equal(TrainingIndex.load(base).search(x[:5], 3).ids, idx.search(x[:5], 3).ids)
