"""Stochastic kNN estimators (science.md §3.4): NNSE importance sampling and the stratified estimator.

Everything is checked against the float64 exact ``EmpiricalScore(train, backend="reference")`` on
small clustered data (N = 2000, d in {2, 16}).  Repetitions are rows of one batch: a query tiled
R times gets R independent sets of draws in one call (cheap on 2 cores).
"""
import numpy as np
import pytest

import nnscore as ns
from nnscore.scores.stochastic import ImportanceSampledScore, StratifiedScore, _sample_complement

N = 2000
N_Q = 8  # distinct queries
REPS = 40  # independent repetitions of each query
REPS_RATE = 150  # repetitions of the 1/sqrt(n) tests (small-n errors are heavy-tailed)


def _clustered(n, d, gen):
    centres = 3.0 * gen.standard_normal((10, d))
    return centres[gen.integers(0, 10, n)] + 0.5 * gen.standard_normal((n, d))


@pytest.fixture(scope="module", params=[2, 16], ids=lambda d: f"d{d}")
def setup(request):
    d = request.param
    gen = np.random.default_rng(100 + d)
    train = _clustered(N, d, gen)
    queries = train[gen.choice(N, N_Q, replace=False)] + 0.5 * gen.standard_normal((N_Q, d))
    # sigma such that the k = 32 neighbours hold a good part, but not all, of the posterior mass
    sigma = 1.0
    exact = ns.EmpiricalScore(train, backend="reference").evaluate(queries, sigma)
    index = ns.TrainingIndex(train, kind="flat")
    return train, index, queries, sigma, exact


def _tiled(q, reps):
    return np.tile(q, (reps, 1))


def _errors(model, q, t, exact_score, reps=REPS):
    """Score errors (reps, N_Q) and the result of the tiled batch."""
    res = model.evaluate(_tiled(q, reps), t)
    err = np.linalg.norm(res.score.reshape(reps, len(q), -1) - exact_score[None], axis=2)
    return err, res


def _rms(err):
    return np.sqrt(np.mean(err**2))


# --------------------------------------------------------------------------------------------- (a)
def test_snis_error_shrinks_like_inverse_sqrt_n(setup, seed):
    train, index, q, sigma, exact = setup
    # E||err||^2 ~ C / n (plus an O(1/n^2) squared bias): 16x the draws -> 4x smaller RMS error.
    # At n = 64 the weights are heavy-tailed (few draws hit the neighbours that hold most of the
    # mass) and the SNIS bias is not yet negligible, so the small-n RMS is pre-asymptotic (observed
    # ratios ~4 - 5 at d = 16); with REPS_RATE x N_Q = 1200 squared errors per RMS the estimate still
    # fluctuates by ~10-20 %, hence the wide window 2.5 - 6.5.
    e64, _ = _errors(ImportanceSampledScore(index, n_samples=64, k=32, rng=seed), q, sigma, exact.score, REPS_RATE)
    e1k, _ = _errors(ImportanceSampledScore(index, n_samples=1024, k=32, rng=seed + 1), q, sigma, exact.score,
                     REPS_RATE)
    ratio = _rms(e64) / _rms(e1k)
    assert 2.5 <= ratio <= 6.5, ratio


def test_stratified_error_shrinks_like_inverse_sqrt_n(setup, seed):
    train, index, q, sigma, exact = setup
    # Sampling without replacement: Var ~ (1 - L/(N-k))/L, so 16x the tail draws reduce the RMS
    # error by 4 once the finite-population correction is divided out.  L starts at 64: below that
    # (d = 16) the error is pre-asymptotic (a rare heavy tail point dominates the variance but its
    # effect on the ratio is bounded), sqrt(L) RMS grows by ~25 % from L = 16 to 64 and is flat after.
    # Same window as above (observed ~3.6 - 4.3).
    e64, _ = _errors(StratifiedScore(index, k=32, n_tail=64, rng=seed), q, sigma, exact.score, REPS_RATE)
    e1k, _ = _errors(StratifiedScore(index, k=32, n_tail=1024, rng=seed + 1), q, sigma, exact.score, REPS_RATE)
    m = N - 32
    ratio = _rms(e64) / _rms(e1k) / np.sqrt((1 - 64 / m) / (1 - 1024 / m))
    assert 2.5 <= ratio <= 6.5, ratio


# --------------------------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("kind", ["snis", "stratified"])
def test_mc_stderr_matches_observed_spread(setup, seed, kind):
    train, index, q, sigma, exact = setup
    if kind == "snis":
        model = ImportanceSampledScore(index, n_samples=1024, k=32, rng=seed)
    else:
        model = StratifiedScore(index, k=32, n_tail=256, rng=seed)
    err, res = _errors(model, q, sigma, exact.score)
    observed = np.sqrt(np.mean(err**2, axis=0))  # per query, over the repetitions (bias ~ 1/n: negligible)
    reported = np.sqrt(np.mean(res.mc_stderr.reshape(REPS, N_Q) ** 2, axis=0))
    ratio = reported / observed
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


# --------------------------------------------------------------------------------------------- (c), (d)
def _assert_exact(res, ref, tol=1e-10):
    np.testing.assert_allclose(res.denoised, ref.denoised, rtol=0, atol=tol)
    np.testing.assert_allclose(res.score, ref.score, rtol=0, atol=tol)
    np.testing.assert_allclose(res.log_density, ref.log_density, rtol=0, atol=tol)
    np.testing.assert_allclose(res.posterior_variance, ref.posterior_variance, rtol=1e-9, atol=tol)
    np.testing.assert_array_equal(res.top1, ref.top1)


@pytest.mark.parametrize("k", [1, 32, N])
def test_stratified_full_tail_or_full_k_is_exact(setup, k):
    train, index, q, sigma, exact = setup
    res = StratifiedScore(index, k=k, n_tail=N, rng=0).evaluate(q, sigma)
    _assert_exact(res, exact)
    assert np.all(res.mc_stderr == 0.0)
    assert np.all(res.error_bound < 1e-9)
    assert set(res.path) == {"stratified"} and np.all(res.k_used == k)
    assert res.n_eff is None and res.max_weight is None


def test_snis_k_equals_n_is_exact(setup):
    train, index, q, sigma, exact = setup
    res = ImportanceSampledScore(index, n_samples=8, k=N, rng=0).evaluate(q, sigma)
    _assert_exact(res, exact)
    assert np.all(res.mc_stderr == 0.0) and np.all(res.error_bound == 0.0)


# --------------------------------------------------------------------------------------------- (e)
@pytest.mark.parametrize("cls", [ImportanceSampledScore, StratifiedScore])
def test_fixed_seed_is_deterministic(setup, cls):
    train, index, q, sigma, exact = setup
    kw = dict(k=16, rng=7)
    a = cls(index, **kw)
    b = cls(train, **kw)  # an array builds its own (flat) index: same neighbours
    ra, rb = a.evaluate(q, sigma), b.evaluate(q, sigma)
    for name in ("score", "denoised", "log_density", "posterior_variance", "mc_stderr", "error_bound", "top1"):
        np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name))
    # later calls draw anew (different from the first, equal across the two models)
    ra2, rb2 = a.evaluate(q, sigma), b.evaluate(q, sigma)
    np.testing.assert_array_equal(ra2.score, rb2.score)
    assert not np.array_equal(ra.score, ra2.score)
    rc = cls(index, k=16, rng=np.random.default_rng(8)).evaluate(q, sigma)
    assert not np.array_equal(ra.score, rc.score)
    path = "snis" if cls is ImportanceSampledScore else "stratified"
    assert set(ra.path) == {path}
    assert ra.top1.dtype == np.int64 and np.all(ra.top1 == exact.top1)  # the nearest neighbour


# --------------------------------------------------------------------------------------------- (f)
@pytest.mark.parametrize("sigma", [0.2, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("k,n_tail", [(4, 8), (32, 64), (128, 1)])
def test_stratified_error_within_deterministic_bound(setup, seed, sigma, k, n_tail):
    train, index, q, _, _ = setup
    ref = ns.EmpiricalScore(train, backend="reference").evaluate(q, sigma)
    err, res = _errors(StratifiedScore(index, k=k, n_tail=n_tail, rng=seed), q, sigma, ref.score, reps=10)
    bound = res.error_bound.reshape(10, N_Q)
    assert np.all(np.isfinite(bound))
    assert np.all(err <= bound), np.max(err / bound)


# --------------------------------------------------------------------------------------------- (g)
@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_snis_rms_error_within_rms_bound(setup, seed, sigma):
    train, index, q, _, _ = setup
    ref = ns.EmpiricalScore(train, backend="reference").evaluate(q, sigma)
    err, res = _errors(ImportanceSampledScore(index, n_samples=128, k=16, rng=seed), q, sigma, ref.score)
    rms = np.sqrt(np.mean(err**2, axis=0))  # per query
    bound = res.error_bound.reshape(REPS, N_Q)
    assert np.all(bound == bound[0])  # the bound depends on the query only, not on the draws
    assert np.all(rms <= bound[0]), np.max(rms / bound[0])


# --------------------------------------------------------------------------------------------- (h)
def test_nonuniform_weights(setup, seed):
    train, index, q, sigma, _ = setup
    w = np.random.default_rng(seed).uniform(0.0, 3.0, N) ** 2
    w[:50] = 0.0  # zero-weight points are never drawn and never counted
    ref = ns.EmpiricalScore(train, weights=w, backend="reference").evaluate(q, sigma)
    # exact limits
    _assert_exact(StratifiedScore(index, k=32, n_tail=N, weights=w, rng=seed).evaluate(q, sigma), ref)
    _assert_exact(StratifiedScore(index, k=N, weights=w, rng=seed).evaluate(q, sigma), ref)
    _assert_exact(ImportanceSampledScore(index, k=N, weights=w, rng=seed).evaluate(q, sigma), ref)
    # the estimators converge to the weighted model: RMS error ~ the reported standard error
    for model in (ImportanceSampledScore(index, n_samples=1024, k=32, weights=w, rng=seed),
                  StratifiedScore(index, k=32, n_tail=256, weights=w, rng=seed)):  # fmt: skip
        err, res = _errors(model, q, sigma, ref.score, reps=20)
        ratio = _rms(err) / np.sqrt(np.mean(res.mc_stderr**2))
        assert 0.5 < ratio < 2.0, (type(model).__name__, ratio)
        lbound = res.error_bound.reshape(20, N_Q)[0]
        if isinstance(model, StratifiedScore):
            assert np.all(err <= lbound)
        else:
            assert np.all(np.sqrt(np.mean(err**2, axis=0)) <= lbound)
        # log Z is estimated without bias: log p - log p_hat is small at these sample sizes
        assert np.max(np.abs(res.log_density.reshape(20, N_Q) - ref.log_density)) < 1.0


@pytest.mark.parametrize("schedule,t", [("vp", 0.3), ("flow", 0.4)])
def test_other_schedules(setup, schedule, t):
    train, index, q, _, _ = setup
    emp = ns.EmpiricalScore(train, schedule=schedule, backend="reference")
    x = 0.8 * q
    ref = emp.evaluate(x, t)
    _assert_exact(StratifiedScore(index, k=8, n_tail=N, schedule=schedule).evaluate(x, t), ref)
    _assert_exact(ImportanceSampledScore(index, k=N, schedule=schedule).evaluate(x, t), ref)
    for model in (ImportanceSampledScore(index, n_samples=1024, k=32, schedule=schedule, rng=1),
                  StratifiedScore(index, k=32, n_tail=256, schedule=schedule, rng=1)):  # fmt: skip
        err, res = _errors(model, x, t, ref.score, reps=20)
        np.testing.assert_allclose(res.sigma, np.tile(ref.sigma, 20))
        ratio = _rms(err) / np.sqrt(np.mean(res.mc_stderr**2))
        assert 0.4 < ratio < 2.5, (type(model).__name__, ratio)


# --------------------------------------------------------------------------------------------- (i)
@pytest.mark.parametrize("cls", [ImportanceSampledScore, StratifiedScore])
def test_bad_input(setup, cls):
    train, index, q, sigma, _ = setup
    count = "n_samples" if cls is ImportanceSampledScore else "n_tail"
    with pytest.raises(ValueError, match=count):
        cls(index, **{count: 0})
    with pytest.raises(TypeError, match=count):
        cls(index, **{count: 2.5})
    with pytest.raises(ValueError, match="k"):
        cls(index, k=0)
    with pytest.raises(ValueError, match="k: must be <= N"):
        cls(index, k=N + 1)
    with pytest.raises(TypeError, match="k"):
        cls(index, k="auto")
    with pytest.raises(TypeError, match="rng"):
        cls(index, rng="seed")
    with pytest.raises(ValueError, match="weights"):
        cls(index, weights=np.ones(N - 1))
    with pytest.raises(ValueError, match="weights"):
        cls(index, weights=-np.ones(N))
    with pytest.raises(ValueError, match="schedule|unknown"):
        cls(index, schedule="nope")
    model = cls(index, k=8, rng=0)
    with pytest.raises(ValueError, match="x"):
        model.evaluate(q[:, :1], sigma)
    with pytest.raises(ValueError, match="x"):
        model.evaluate(np.full_like(q, np.nan), sigma)
    with pytest.raises(ValueError, match="t"):
        model.evaluate(q, -1.0)
    empty = model.evaluate(q[:0], sigma)
    assert empty.score.shape == (0, q.shape[1]) and empty.mc_stderr.shape == (0,)
    assert repr(model).startswith(cls.__name__)
    assert model.n_train == N and model.train.shape == (N, q.shape[1]) and model.data.n_points == N


def test_sample_complement_is_uniform_and_disjoint():
    gen = np.random.default_rng(0)
    nbr = np.stack([gen.choice(20, 5, replace=False) for _ in range(4000)])
    out = _sample_complement(nbr, 20, 3, gen)
    assert out.shape == (4000, 3)
    for row_n, row_o in zip(nbr[:200], out[:200]):
        assert len(set(row_o)) == 3 and not set(row_o) & set(row_n) and row_o.max() < 20
    # each complement element is chosen with probability 3/15
    hits = np.zeros(20)
    for row_n, row_o in zip(nbr, out):
        np.add.at(hits, row_o, 1)
    counts = np.array([np.sum(~np.any(nbr == j, axis=1)) for j in range(20)])
    np.testing.assert_allclose(hits / counts, 3 / 15, atol=0.03)


def test_trailing_shape_of_an_array_is_kept():
    gen = np.random.default_rng(0)
    train = gen.standard_normal((300, 2, 3))
    x = train[:4] + 0.1
    ref = ns.EmpiricalScore(train, backend="reference").evaluate(x, 0.5)
    for model in (ImportanceSampledScore(train, k=300), StratifiedScore(train, k=10, n_tail=300)):
        res = model.evaluate(x, 0.5)
        assert res.score.shape == (4, 2, 3) and model.shape == (2, 3)
        np.testing.assert_allclose(res.score, ref.score, rtol=0, atol=1e-10)
        np.testing.assert_allclose(model.evaluate(x.reshape(4, 6), 0.5).score, ref.score, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", [ImportanceSampledScore, StratifiedScore])
def test_bounds_do_not_depend_on_the_weight_scale(setup, cls, seed):
    """pi and c pi are the same model: the estimates and both error measures must agree."""
    train, index, q, sigma, _ = setup
    w = np.random.default_rng(seed).uniform(0.5, 1.0, N)
    a, b = (cls(index, k=32, weights=c * w, rng=seed).evaluate(q, sigma) for c in (1.0, 1e6))
    np.testing.assert_allclose(b.score, a.score, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.error_bound, a.error_bound, rtol=1e-6)
    np.testing.assert_allclose(b.mc_stderr, a.mc_stderr, rtol=1e-6, atol=1e-300)
