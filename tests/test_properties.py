"""Invariances and closed forms of the exact empirical score (hypothesis, float64).

Hypothesis draws bounded finite float64 data (|values| <= 10, sigma in [0.1, 10]); runs are
derandomized (conftest's "nnscore" profile).  Two evaluations of the same quantity are
compared with tolerances built from the size of the logits: every float64 evaluation of
l_i = log pi_i - |y - x_i|^2 / (2 sigma^2) carries ~eps |l_i| of rounding, which moves D by at
most 2 R times that and log p by that.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_array_equal
from scipy.special import logsumexp

import nnscore as ns
from nnscore.partials import merge

from conftest import ref_f64

EPS = np.finfo(np.float64).eps
BACKENDS = ns.available_backends()
SETTINGS = settings(deadline=None)  # max_examples: the conftest profile (40)

coords = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=64)
sigmas = st.floats(0.1, 10.0, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw, min_n=1, max_n=8, max_d=4, max_m=4):
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, max_d))
    m = draw(st.integers(1, max_m))
    train = draw(hnp.arrays(np.float64, (n, d), elements=coords))
    x = draw(hnp.arrays(np.float64, (m, d), elements=coords))
    sigma = draw(sigmas)
    return train, x, sigma


def _radius(train) -> float:
    return float(np.sqrt(np.max(np.sum((train - train.mean(axis=0)) ** 2, axis=1))))


def _tolerances(train, x, sigma, extra_logit=0.0):
    """Per-query tolerances (tol_D, tol_logp) for two float64 evaluations of one problem."""
    sq = np.sum((x[:, None, :] - train[None, :, :]) ** 2, axis=-1)
    lrange = np.max(sq, axis=1) / (2 * sigma**2) + 1.0  # largest |logit| (+1: log weights)
    dl = 256 * EPS * lrange + extra_logit  # logit error of either evaluation
    R = _radius(train)
    far = np.sqrt(np.max(sq, axis=1))  # |y - D| <= max |y - x_i|: cancellation in D = y + v/z
    scale = R + np.max(np.abs(train)) + 1.0
    tol_D = 2 * R * dl + 256 * EPS * (far + scale)
    d = train.shape[1]
    tol_lp = dl + 256 * EPS * (d * abs(np.log(sigma)) + np.log(train.shape[0]) + 1.0)
    return tol_D, tol_lp


def assert_same_result(a, b, tol_D, tol_lp, what=""):
    err_D = np.linalg.norm(a.denoised.reshape(len(tol_D), -1) - b.denoised.reshape(len(tol_D), -1), axis=1)
    assert np.all(err_D <= tol_D), f"{what}: denoiser differs by {err_D.max():.3e} > {tol_D.min():.3e}"
    err_lp = np.abs(a.log_density - b.log_density)
    assert np.all(err_lp <= tol_lp), f"{what}: log density differs by {err_lp.max():.3e} > {tol_lp.min():.3e}"


def _top1_is_argmax(top1, train, x, sigma, weights=None, slack=0.0):
    """top1 (indexing ``train``) is an argmax of the exact logits, up to rounding (ties)."""
    logits = ref_f64(train, x, sigma, weights=weights)["logits"]
    lmax = logits.max(axis=1)
    tol = 256 * EPS * np.maximum(1.0, np.abs(lmax)) + slack
    return logits[np.arange(len(top1)), top1] >= lmax - tol


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(), data=st.data())
def test_permutation_invariance(backend, prob, data):
    train, x, sigma = prob
    perm = np.asarray(data.draw(st.permutations(range(train.shape[0]))))
    a = ns.EmpiricalScore(train, backend=backend).evaluate(x, sigma)
    b = ns.EmpiricalScore(train[perm], backend=backend).evaluate(x, sigma)
    assert_same_result(a, b, *_tolerances(train, x, sigma), what="permuted")
    # top1 follows the permutation (up to ties): perm[b.top1] is an argmax in the original order.
    assert _top1_is_argmax(perm[b.top1], train, x, sigma).all()
    assert _top1_is_argmax(a.top1, train, x, sigma).all()


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(min_n=2, max_n=12), data=st.data())
def test_shard_invariance(backend, prob, data):
    train, x, sigma = prob
    n = train.shape[0]
    n_shards = data.draw(st.integers(2, min(3, n)))
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), min_size=n_shards - 1, max_size=n_shards - 1,
                                     unique=True)))
    bounds = [0, *cuts, n]
    # Unnormalised weights per shard (or none: one unit per point) merge to the weighted union.
    w = None
    if data.draw(st.booleans()):
        w = np.asarray(data.draw(st.lists(st.floats(0.01, 100.0), min_size=n, max_size=n)))
    parts = [
        ns.partial_reduce(x, train[lo:hi], sigma, index_offset=lo, backend=backend,
                          weights=None if w is None else w[lo:hi])
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]
    merged = parts[0]
    for p in parts[1:]:
        merged = merge(merged, p)
    got = ns.finalize(merged, x, sigma)
    want = ns.EmpiricalScore(train, weights=w, backend=backend).evaluate(x, sigma)
    tol_D, tol_lp = _tolerances(train, x, sigma)
    assert_same_result(got, want, tol_D, tol_lp + 64 * EPS * np.log(1e4 * n), what=f"{n_shards} shards")
    tol = 1e-9 * (_radius(train) ** 2 + 1.0) + 256 * EPS * np.max(np.sum((x[:, None] - train[None]) ** 2, -1))
    assert np.all(np.abs(got.posterior_variance - want.posterior_variance) <= tol)
    assert np.all((got.top1 >= 0) & (got.top1 < n))
    # Equal top1, except between (near-)tied points: then both are argmaxes of the exact logits.
    same = got.top1 == want.top1
    assert np.all(same | _top1_is_argmax(got.top1, train, x, sigma, weights=w))
    assert _top1_is_argmax(want.top1, train, x, sigma, weights=w).all()


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(min_n=3, max_n=12), data=st.data())
def test_merge_associative_and_commutative(backend, prob, data):
    train, x, sigma = prob
    n = train.shape[0]
    c1, c2 = sorted(data.draw(st.lists(st.integers(1, n - 1), min_size=2, max_size=2, unique=True)))
    p1 = ns.partial_reduce(x, train[:c1], sigma, backend=backend)
    p2 = ns.partial_reduce(x, train[c1:c2], sigma, index_offset=c1, backend=backend)
    p3 = ns.partial_reduce(x, train[c2:], sigma, index_offset=c2, backend=backend)
    # Commutativity is exact for the sums (IEEE + and * commute); top1 prefers the left side
    # only on an exact tie of the max logit.
    ab, ba = merge(p1, p2), merge(p2, p1)
    for name in ("m", "z", "v", "q", "z2"):
        assert_array_equal(getattr(ab, name), getattr(ba, name), err_msg=name)
    assert ab.log_mass == ba.log_mass
    tie = p1.m == p2.m
    assert_array_equal(ab.top1[~tie], ba.top1[~tie])
    # Associativity up to rounding of the rescalings.
    left = ns.finalize(merge(merge(p1, p2), p3), x, sigma)
    right = ns.finalize(merge(p1, merge(p2, p3)), x, sigma)
    assert_same_result(left, right, *_tolerances(train, x, sigma), what="associativity")
    assert_array_equal(left.top1, right.top1)  # the same comparisons of the same maxima


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(min_n=1, max_n=1))
def test_single_point_closed_form(backend, prob):
    train, x, sigma = prob
    d = train.shape[1]
    res = ns.EmpiricalScore(train, backend=backend).evaluate(x, sigma)
    diff = train[0] - x  # (M, d)
    dist2 = np.sum(diff**2, axis=1)
    # D = x_1: computed as y + (x_1 - y), a couple of ulps of |y| and |x_1|.
    assert np.all(np.abs(res.denoised - train[0]) <= 4 * EPS * (np.abs(x) + np.abs(train[0])))
    score = diff / sigma**2
    assert np.all(np.abs(res.score - score) <= 8 * EPS * (np.abs(x) + np.abs(train[0])) / sigma**2)
    logpdf = -0.5 * dist2 / sigma**2 - 0.5 * d * np.log(2 * np.pi * sigma**2)
    assert np.all(np.abs(res.log_density - logpdf) <= 64 * EPS * (np.abs(logpdf) + d * abs(np.log(sigma)) + 1))
    # tr C = q/z - |v/z|^2 = |x_1 - y|^2 - |x_1 - y|^2: cancellation of a few eps |x_1 - y|^2.
    assert np.all(np.abs(res.posterior_variance) <= 16 * EPS * dist2)
    assert np.all(np.abs(res.divergence + d / sigma**2) <= 16 * EPS * (dist2 / sigma**2 + d) / sigma**2)
    assert_array_equal(res.top1, 0)
    assert_array_equal(res.max_weight, 1.0)
    assert_array_equal(res.n_eff, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(), reps=st.integers(2, 3))
def test_duplication_invariance(backend, prob, reps):
    train, x, sigma = prob
    a = ns.EmpiricalScore(train, backend=backend).evaluate(x, sigma)
    b = ns.EmpiricalScore(np.tile(train, (reps, 1)), backend=backend).evaluate(x, sigma)
    assert_same_result(a, b, *_tolerances(train, x, sigma), what=f"tiled x{reps}")
    n = train.shape[0]
    assert _top1_is_argmax(b.top1 % n, train, x, sigma).all()


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(), data=st.data())
def test_weights_are_repeated_points(backend, prob, data):
    """Integer weights k_i give the mixture of the set with x_i repeated k_i times."""
    train, x, sigma = prob
    n = train.shape[0]
    counts = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    assume(counts.sum() > 0)
    scale = data.draw(st.sampled_from([1.0, 0.5, 7.25]))  # only proportions matter
    a = ns.EmpiricalScore(train, weights=scale * counts, backend=backend).evaluate(x, sigma)
    rep = np.repeat(train, counts, axis=0)
    b = ns.EmpiricalScore(rep, backend=backend).evaluate(x, sigma)
    tol_D, tol_lp = _tolerances(rep, x, sigma)
    assert_same_result(a, b, tol_D, tol_lp + 64 * EPS * np.log(counts.sum() + 1), what="weights")
    assert np.all(counts[a.top1] > 0)
    # Doubling one weight is duplicating that point.
    j = data.draw(st.integers(0, n - 1))
    w = np.ones(n)
    w[j] = 2.0
    c = ns.EmpiricalScore(train, weights=w, backend=backend).evaluate(x, sigma)
    dup = np.concatenate([train, train[j : j + 1]])
    e = ns.EmpiricalScore(dup, backend=backend).evaluate(x, sigma)
    assert_same_result(c, e, *_tolerances(dup, x, sigma), what="doubled weight")


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(), shift=hnp.arrays(np.float64, 4, elements=st.floats(-100.0, 100.0)))
def test_translation_equivariance(backend, prob, shift):
    train, x, sigma = prob
    c = shift[: train.shape[1]]
    a = ns.EmpiricalScore(train, backend=backend).evaluate(x, sigma)
    b = ns.EmpiricalScore(train + c, backend=backend).evaluate(x + c, sigma)
    # x + c and x_i + c are rounded (by eps (|x| + |c|)): distances move by about that much,
    # the logits by |y - x_i| * 2 eps (|x| + |c|) / sigma^2, hence the extra logit slack.
    big = np.max(np.abs(train)) + np.max(np.abs(x)) + np.max(np.abs(c)) + 1.0
    far = np.sqrt(np.max(np.sum((x[:, None] - train[None]) ** 2, -1), axis=1)) + 1.0
    tol_D, tol_lp = _tolerances(train, x, sigma, extra_logit=8 * EPS * big * far / sigma**2)
    tol_D = tol_D + 8 * EPS * big  # D + c is itself rounded
    shifted = ns.ScoreResult(**{**a.__dict__, "denoised": a.denoised + c})
    assert_same_result(shifted, b, tol_D, tol_lp, what="translated")
    # tr C is translation invariant: it moves by <= 4 R^2 x (logit error), plus the
    # cancellation in q/z - |v/z|^2 of ~eps |y - D|^2 (distances up to ``far``, offsets ``big``).
    R = _radius(train)
    dl = tol_lp  # per-query logit error bound used above
    tol_pv = 4 * (R + 1) ** 2 * dl + 256 * EPS * (far + big) ** 2
    assert np.all(np.abs(a.posterior_variance - b.posterior_variance) <= tol_pv)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(), log2k=st.floats(-3.0, 3.0))
def test_scaling(backend, prob, log2k):
    train, x, sigma = prob
    k = 2.0**log2k
    d = train.shape[1]
    a = ns.EmpiricalScore(train, backend=backend).evaluate(x, sigma)
    b = ns.EmpiricalScore(train * k, backend=backend).evaluate(x * k, sigma * k)
    tol_D, tol_lp = _tolerances(train, x, sigma)  # logits are scale invariant; inputs rounded
    scaled = ns.ScoreResult(**{**a.__dict__, "denoised": a.denoised * k,
                               "log_density": a.log_density - d * np.log(k)})
    assert_same_result(scaled, b, tol_D * k, tol_lp + 64 * EPS * d * abs(np.log(k)), what=f"k={k}")
    assert np.all(np.abs(b.divergence - a.divergence / k**2) <= 1e-9 * np.abs(a.divergence / k**2) + 1e-9 * d / (sigma * k) ** 2)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(min_n=2))
def test_small_sigma_gives_nearest_neighbour(backend, prob):
    train, x, _ = prob
    sq = np.sum((x[:, None, :] - train[None, :, :]) ** 2, axis=-1)
    order = np.sort(sq, axis=1)
    nn = np.argmin(sq, axis=1)
    # The nearest point must be unique (else D averages the tied points): a gap in distance.
    distinct = np.array([np.any(train != train[i], axis=1) for i in nn])  # other coordinates
    second = np.array([np.min(np.where(distinct[j], sq[j], np.inf)) for j in range(len(nn))])
    gap = second - order[:, 0]
    assume(np.all(np.isfinite(gap)) and np.all(gap > 1e-6 * (1.0 + order[:, 0])))
    # sigma^2 = gap / 200: other weights <= N exp(-100) relative to the nearest point's.
    res = ns.EmpiricalScore(train, backend=backend).evaluate(x, np.sqrt(gap / 200.0))
    R = _radius(train)
    err = np.linalg.norm(res.denoised - train[nn], axis=1)
    assert np.all(err <= 1e-12 * (R + np.abs(train).max() + np.abs(x).max() + 1.0) + 16 * R * np.exp(-100) * len(train))
    assert np.all(np.all(train[res.top1] == train[nn], axis=1))


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(prob=problems(min_n=2), weighted=st.booleans(), data=st.data())
def test_large_sigma_gives_mean(backend, prob, weighted, data):
    train, x, _ = prob
    n = train.shape[0]
    w = np.asarray(data.draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n))) if weighted else None
    R = _radius(train)
    spread = R + np.max(np.linalg.norm(x - train.mean(axis=0), axis=1)) + 1.0
    sigma = 1e7 * spread
    res = ns.EmpiricalScore(train, weights=w, backend=backend).evaluate(x, sigma)
    wn = np.full(n, 1.0 / n) if w is None else w / w.sum()
    mean = wn @ train
    # |D - mean| <= R * max |logit differences| ~ R spread^2 / sigma^2 = 1e-14 R, plus rounding.
    err = np.linalg.norm(res.denoised - mean, axis=1)
    assert np.all(err <= 1e-12 * (R + np.abs(train).max() + np.abs(x).max() + 1.0))
    # log p tends to log N(x; mean-ish, sigma^2): the Gaussian normaliser dominates.
    lp = -0.5 * train.shape[1] * np.log(2 * np.pi * sigma**2)
    assert np.all(np.abs(res.log_density - lp) <= 1e-10 * abs(lp) + spread**2 / sigma**2)


def test_log_density_normalises_in_one_dimension():
    """The mixture density integrates to 1 (trapezoid on a fine grid, d = 1)."""
    rng = np.random.default_rng(3)
    train = rng.standard_normal((7, 1))
    w = rng.uniform(0.5, 2.0, 7)
    model = ns.EmpiricalScore(train, weights=w)
    grid = np.linspace(-12, 12, 4001)[:, None]
    logp = model.log_density(grid, 0.7)
    # Trapezoid error O(h^2 f'') ~ 1e-6 with h = 6e-3; tails beyond +-12 are exp(-100).
    assert abs(np.trapezoid(np.exp(logp), grid[:, 0]) - 1.0) < 1e-6
    # And pointwise: log sum_i pi_i N(x; x_i, s^2), written out with scipy's logsumexp.
    ref = logsumexp(np.log(w / w.sum()) - 0.5 * (grid - train[:, 0]) ** 2 / 0.49, axis=1) \
        - 0.5 * np.log(2 * np.pi * 0.49)
    assert np.all(np.abs(logp - ref) <= 1e-12 * (np.abs(ref) + 1))
