"""Tests of nnscore.schedules: coefficients, inverses, parametrisation identities and grids."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from nnscore import schedules
from nnscore.schedules import (
    CFDM,
    EDM,
    VE,
    VP,
    Flow,
    Schedule,
    VPCosine,
    geometric_grid,
    get_schedule,
    karras_grid,
    linear_grid,
    noise_grid,
)

ALL = [VE(), VP(), VP(beta_min=0.0, beta_max=5.0), VPCosine(), VPCosine(s0=0.0), EDM(), Flow(), CFDM()]
IDS = [repr(s) for s in ALL]

# Interior times of every schedule, away from the ends so that central differences are valid.
INTERIOR = {
    "ve": [1e-2, 0.3, 1.0, 7.5, 80.0],
    "edm": [1e-2, 0.3, 1.0, 7.5, 80.0],
    "vp": [0.02, 0.1, 0.5, 0.9, 0.99],
    "vp-cosine": [0.02, 0.1, 0.5, 0.9, 0.98],
    "flow": [0.02, 0.1, 0.5, 0.9, 0.98],
    "cfdm": [0.02, 0.1, 0.5, 0.9, 0.98],
}


def _times(sched: Schedule) -> np.ndarray:
    return np.array(INTERIOR[sched.name])


# ---------------------------------------------------------------------------------------------
# Coefficients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_derivatives_match_central_differences(sched):
    t = _times(sched)
    # Relative step: central differences have O(h^2) truncation and O(eps/h) rounding error,
    # so h ~ 1e-6 t leaves about 1e-8 relative error on these smooth functions.
    h = 1e-6 * t
    fd_a = (sched.alpha(t + h) - sched.alpha(t - h)) / (2 * h)
    fd_s = (sched.sigma(t + h) - sched.sigma(t - h)) / (2 * h)
    scale_a = np.maximum(np.abs(sched.d_alpha(t)), 1e-3)
    scale_s = np.maximum(np.abs(sched.d_sigma(t)), 1e-3)
    assert_allclose(sched.d_alpha(t) / scale_a, fd_a / scale_a, rtol=0, atol=1e-6)
    assert_allclose(sched.d_sigma(t) / scale_s, fd_s / scale_s, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_scalar_in_scalar_out_and_float64(sched):
    t = INTERIOR[sched.name][2]
    for method in (sched.alpha, sched.sigma, sched.d_alpha, sched.d_sigma, sched.sigma_tilde):
        out = method(t)
        assert isinstance(out, float) and isinstance(out, np.float64)
        arr = method(np.array([t, t], dtype=np.float32))
        assert arr.dtype == np.float64 and arr.shape == (2,)
    assert isinstance(sched.t_from_sigma_tilde(1.0), float)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_sigma_tilde_is_ratio_and_zero_at_data_end(sched):
    t = _times(sched)
    assert_allclose(sched.sigma_tilde(t), sched.sigma(t) / sched.alpha(t), rtol=1e-13)
    assert sched.sigma_tilde(sched.data_end) == 0.0
    assert sched.alpha(sched.data_end) == 1.0
    assert sched.sigma(sched.data_end) == 0.0
    assert sched.t_from_sigma_tilde(0.0) == sched.data_end


def test_ve_and_edm_share_coefficients():
    t = np.geomspace(1e-4, 1e3, 17)
    ve, edm = VE(), EDM()
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "sigma_tilde"):
        assert_array_equal(getattr(ve, name)(t), getattr(edm, name)(t))
    assert_array_equal(ve.alpha(t), np.ones_like(t))
    assert_array_equal(ve.sigma(t), t)


@pytest.mark.parametrize("sched", [VP(), VP(0.0, 5.0), VPCosine(), VPCosine(0.0)], ids=repr)
def test_vp_schedules_preserve_variance(sched):
    t = np.linspace(1e-3, 0.99, 41)
    assert_allclose(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, 1.0, rtol=1e-14)


def test_vp_closed_forms():
    sched = VP(beta_min=0.1, beta_max=20.0)
    t = np.array([0.25, 0.5, 1.0])
    log_a = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    assert_allclose(sched.alpha(t), np.exp(log_a), rtol=1e-15)
    assert_allclose(sched.sigma(t), np.sqrt(1 - np.exp(2 * log_a)), rtol=1e-14)
    # Small t: s^2 ~ beta_min t to first order, resolved without cancellation.
    assert_allclose(sched.sigma(1e-12) ** 2, 0.1e-12, rtol=1e-9)


def test_vp_cosine_closed_form_and_small_t_accuracy():
    sched = VPCosine(s0=0.008)
    t = np.array([0.1, 0.5, 0.9])
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2)  # noqa: E731
    assert_allclose(sched.alpha(t), f(t) / f(0.0), rtol=1e-14)
    # At tiny t, 1 - a = tan(phi0) (pi/2) t / 1.008 to first order; naive 1 - a^2 would lose it.
    tiny = 1e-13
    one_minus_a = math.tan(0.008 / 1.008 * math.pi / 2) * math.pi / 2 / 1.008 * tiny
    assert_allclose(sched.sigma(tiny), math.sqrt(2 * one_minus_a), rtol=1e-6)


def test_flow_and_cfdm_closed_forms():
    t = np.array([0.1, 0.4, 0.75])
    assert_allclose(Flow().alpha(t), 1 - t, rtol=0, atol=0)
    assert_allclose(Flow().sigma_tilde(t), t / (1 - t), rtol=1e-15)
    assert_allclose(CFDM().alpha(t), t, rtol=0, atol=0)
    assert_allclose(CFDM().sigma_tilde(t), (1 - t) / t, rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# Inverse of sigma_tilde
# ---------------------------------------------------------------------------------------------

_T_STRATEGIES = {
    # (low, high) of the domain sampled; the lower end stays clear of subnormals, where
    # sigma_tilde itself underflows.
    "ve": (1e-200, 1e200),
    "edm": (1e-200, 1e200),
    "vp": (1e-100, 1.0),
    "vp-cosine": (1e-100, 1.0 - 1e-12),
    "flow": (1e-100, 1.0 - 1e-12),
    "cfdm": (1e-100, 1.0 - 1e-12),
}


@pytest.mark.parametrize("sched", ALL, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_t_from_sigma_tilde_round_trips(sched, data):
    lo, hi = _T_STRATEGIES[sched.name]
    # Sample log-uniformly near both ends as well as uniformly across the domain.
    t = data.draw(
        st.one_of(
            st.floats(lo, hi, allow_nan=False, allow_infinity=False),
            st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e),
            st.floats(1e-12, 0.5).map(lambda u: hi - u if hi <= 1.0 else u),
        ).filter(lambda u: lo <= u <= hi)
    )
    back = sched.t_from_sigma_tilde(sched.sigma_tilde(t))
    assert_allclose(back, t, rtol=1e-10, atol=0)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_t_from_sigma_tilde_vectorised(sched):
    t = _times(sched)
    st_ = sched.sigma_tilde(t)
    assert_allclose(sched.t_from_sigma_tilde(st_), t, rtol=1e-12)
    assert_allclose(sched.t_from_sigma_tilde(st_.reshape(1, -1)), t.reshape(1, -1), rtol=1e-12)


def test_t_from_sigma_tilde_closed_forms():
    s = np.array([0.01, 1.0, 50.0])
    assert_array_equal(VE().t_from_sigma_tilde(s), s)
    assert_allclose(Flow().t_from_sigma_tilde(s), s / (1 + s), rtol=1e-15)
    assert_allclose(CFDM().t_from_sigma_tilde(s), 1 / (1 + s), rtol=1e-15)


def test_t_from_sigma_tilde_rejects_bad_values():
    with pytest.raises(ValueError, match="st"):
        VE().t_from_sigma_tilde(-1.0)
    with pytest.raises(ValueError, match="st"):
        Flow().t_from_sigma_tilde(np.nan)
    with pytest.raises(ValueError, match="st"):
        VP().t_from_sigma_tilde(1e4)  # beyond sigma_tilde(1) ~ 152
    with pytest.raises(TypeError, match="st"):
        VE().t_from_sigma_tilde(1 + 1j)


# ---------------------------------------------------------------------------------------------
# Coordinates and parametrisations
# ---------------------------------------------------------------------------------------------


def _batch(sched, rng, m=5, d=3):
    t = rng.choice(_times(sched), size=m)
    x = rng.standard_normal((m, d)) * 2.0
    denoised = rng.standard_normal((m, d))
    return x, denoised, t


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_to_ve_and_score_consistency(sched):
    rng = np.random.default_rng(0)
    x, denoised, t = _batch(sched, rng)
    y, st_ = sched.to_ve(x, t)
    a = sched.alpha(t)
    assert y.shape == x.shape and st_.shape == t.shape
    assert_allclose(y, x / a[:, None], rtol=1e-15)
    assert_allclose(st_, sched.sigma_tilde(t), rtol=0, atol=0)
    score = sched.score_from_denoised(x, denoised, t)
    ve_form = (denoised - y) / (a * st_**2)[:, None]
    assert_allclose(score, ve_form, rtol=1e-10)
    # Tweedie / eps consistency: score = -eps_hat / s.
    eps = sched.eps_from_denoised(x, denoised, t)
    assert_allclose(score, -eps / sched.sigma(t)[:, None], rtol=1e-10)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_scalar_t_broadcasts_like_row_t(sched):
    rng = np.random.default_rng(1)
    x, denoised, _ = _batch(sched, rng, m=4, d=2)
    x = x.reshape(4, 1, 2)
    denoised = denoised.reshape(4, 1, 2)
    t0 = INTERIOR[sched.name][1]
    rows = np.full(4, t0)
    y_s, st_s = sched.to_ve(x, t0)
    y_r, st_r = sched.to_ve(x, rows)
    assert_array_equal(y_s, y_r)
    assert isinstance(st_s, float) and st_r.shape == (4,)
    for name in ("score_from_denoised", "velocity_from_denoised", "eps_from_denoised"):
        assert_array_equal(getattr(sched, name)(x, denoised, t0), getattr(sched, name)(x, denoised, rows))


def test_velocity_identities_flow_and_cfdm():
    rng = np.random.default_rng(2)
    x, denoised, t = _batch(Flow(), rng)
    assert_allclose(Flow().velocity_from_denoised(x, denoised, t), (x - denoised) / t[:, None], rtol=1e-12)
    assert_allclose(
        CFDM().velocity_from_denoised(x, denoised, t), (denoised - x) / (1 - t)[:, None], rtol=1e-12
    )


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_velocity_is_time_derivative_of_the_interpolant(sched):
    # For x_t = a x0 + s eps with the exact denoiser D = x0, the velocity is a' x0 + s' eps.
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((5, 3))
    eps = rng.standard_normal((5, 3))
    t = _times(sched)
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    xt = a * x0 + s * eps
    expected = sched.d_alpha(t)[:, None] * x0 + sched.d_sigma(t)[:, None] * eps
    assert_allclose(sched.velocity_from_denoised(xt, x0, t), expected, rtol=1e-9, atol=1e-9)
    assert_allclose(sched.eps_from_denoised(xt, x0, t), eps, rtol=1e-9, atol=1e-9)


def test_ve_score_is_plain_tweedie():
    x = np.array([[1.0, -2.0]])
    denoised = np.array([[0.5, 0.5]])
    assert_allclose(VE().score_from_denoised(x, denoised, 2.0), (denoised - x) / 4.0, rtol=1e-15)


def test_shape_mismatches_are_rejected():
    sched = Flow()
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="t"):
        sched.to_ve(x, np.full(4, 0.5))
    with pytest.raises(ValueError, match="denoised"):
        sched.score_from_denoised(x, np.zeros((3, 3)), 0.5)


# ---------------------------------------------------------------------------------------------
# Domain validation
# ---------------------------------------------------------------------------------------------

_OUTSIDE = {
    "ve": [0.0, -1.0],
    "edm": [0.0, -0.5],
    "vp": [0.0, -0.1, 1.5],
    "vp-cosine": [0.0, 1.0, 1.2],
    "flow": [0.0, 1.0, 1.5, -0.2],
    "cfdm": [0.0, 1.0, 2.0],
}


@pytest.mark.parametrize("sched", ALL, ids=IDS)
def test_validate_t_rejects_outside_domain(sched):
    for bad in _OUTSIDE[sched.name]:
        with pytest.raises(ValueError, match=r"^t: must satisfy"):
            sched.validate_t(bad)
        with pytest.raises(ValueError, match=r"^t:"):
            sched.score_from_denoised(np.zeros((2, 1)), np.zeros((2, 1)), [INTERIOR[sched.name][0], bad])
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=r"^t: must be finite"):
            sched.validate_t(bad)
    with pytest.raises(TypeError, match=r"^t:"):
        sched.validate_t(0.5 + 0j)
    out = sched.validate_t(_times(sched))
    assert out.dtype == np.float64


def test_validate_t_message_example():
    with pytest.raises(ValueError, match=r"t: must satisfy 0\.0 < t < 1\.0 for the flow schedule, got 1\.5"):
        Flow().validate_t(1.5)


def test_data_end_only_allowed_where_it_is_meaningful():
    # alpha/sigma/sigma_tilde accept the data end; derivatives and scores divide by s there.
    assert CFDM().sigma_tilde(1.0) == 0.0
    with pytest.raises(ValueError, match="t"):
        CFDM().sigma_tilde(0.0)  # the noise end, where a = 0
    with pytest.raises(ValueError, match="t"):
        VP().d_sigma(0.0)
    with pytest.raises(ValueError, match="t"):
        Flow().to_ve(np.zeros((1, 2)), 0.0)


def test_domain_properties():
    assert (VE().t_min, VE().t_max, VE().data_end) == (0.0, math.inf, 0.0)
    assert (VP().t_min, VP().t_max, VP().data_end) == (0.0, 1.0, 0.0)
    assert (CFDM().t_min, CFDM().t_max, CFDM().data_end) == (0.0, 1.0, 1.0)
    assert VP().sigma_tilde(1.0) > 0  # t = 1 belongs to the VP domain
    assert Flow().data_end == 0.0


# ---------------------------------------------------------------------------------------------
# Noise grids
# ---------------------------------------------------------------------------------------------

GRID_FUNCS = {
    "karras": lambda n, lo, hi: karras_grid(n, lo, hi, rho=7.0),
    "geometric": geometric_grid,
    "linear": linear_grid,
}


@pytest.mark.parametrize("kind", list(GRID_FUNCS))
@pytest.mark.parametrize("n", [1, 2, 3, 18, 256])
def test_grid_shape_order_and_endpoints(kind, n):
    lo, hi = 0.002, 80.0
    g = GRID_FUNCS[kind](n, lo, hi)
    assert g.dtype == np.float64 and g.shape == (n + 1,)
    assert g[-1] == 0.0
    assert g[0] == hi
    if n > 1:
        assert g[n - 1] == lo
    assert np.all(np.diff(g) < 0)
    assert_array_equal(noise_grid(kind, n, lo, hi), g)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 60),
    lo=st.floats(1e-6, 1e2),
    ratio=st.floats(1.001, 1e6),
    rho=st.floats(0.5, 10.0),
)
def test_karras_grid_properties(n, lo, ratio, rho):
    hi = lo * ratio
    g = karras_grid(n, lo, hi, rho)
    assert g.shape == (n + 1,) and g[-1] == 0.0 and g[0] == hi
    if n > 1:
        assert g[n - 1] == lo
    assert np.all(np.diff(g) < 0)


def test_karras_formula_and_rho_one_is_linear():
    n, lo, hi, rho = 6, 0.01, 10.0, 3.0
    i = np.arange(n)
    expected = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    assert_allclose(karras_grid(n, lo, hi, rho)[:-1], expected, rtol=1e-14)
    assert_allclose(karras_grid(10, lo, hi, rho=1.0), linear_grid(10, lo, hi), rtol=1e-15)
    assert_allclose(geometric_grid(5, 1.0, 1e4)[:-1], [1e4, 1e3, 1e2, 1e1, 1.0], rtol=1e-14)


def test_n_equal_one_gives_sigma_max_then_zero():
    for kind in GRID_FUNCS:
        assert_array_equal(noise_grid(kind, 1, 0.5, 3.0), [3.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(n=0, sigma_min=0.1, sigma_max=1.0), "n"),
        (dict(n=-3, sigma_min=0.1, sigma_max=1.0), "n"),
        (dict(n=4, sigma_min=0.0, sigma_max=1.0), "sigma_min"),
        (dict(n=4, sigma_min=-1.0, sigma_max=1.0), "sigma_min"),
        (dict(n=4, sigma_min=2.0, sigma_max=1.0), "sigma_min"),
        (dict(n=4, sigma_min=0.1, sigma_max=np.inf), "sigma_max"),
        (dict(n=4, sigma_min=np.nan, sigma_max=1.0), "sigma_min"),
        (dict(n=4, sigma_min=0.1, sigma_max=1.0, rho=0.0), "rho"),
    ],
)
def test_grid_argument_errors(kwargs, name):
    for kind in GRID_FUNCS:
        if "rho" in kwargs and kind != "karras":
            continue
        with pytest.raises(ValueError, match=rf"^{name}:"):
            noise_grid(kind, **kwargs)


def test_grid_type_errors():
    with pytest.raises(TypeError, match="n"):
        karras_grid(2.5, 0.1, 1.0)
    with pytest.raises(TypeError, match="n"):
        linear_grid(True, 0.1, 1.0)
    with pytest.raises(ValueError, match="kind"):
        noise_grid("cosine", 4, 0.1, 1.0)


@pytest.mark.parametrize("sched", ALL, ids=IDS)
@pytest.mark.parametrize("kind", list(GRID_FUNCS))
def test_schedule_grid_maps_noise_grid_to_times(sched, kind):
    n = 12
    t = sched.grid(n, kind=kind)
    lo, hi = sched.default_sigma_range
    sigmas = noise_grid(kind, n, lo, hi)
    assert t.shape == (n + 1,) and t.dtype == np.float64
    assert t[-1] == sched.data_end
    assert_allclose(sched.sigma_tilde(t), sigmas, rtol=1e-10, atol=0)
    step = np.diff(t)
    assert np.all(step > 0) if sched.data_end == 1.0 else np.all(step < 0)
    sched.validate_t(t[:-1])  # every time but the last lies inside the open domain


def test_schedule_grid_custom_range_and_defaults():
    t = VE().grid(5, sigma_min=0.1, sigma_max=10.0, rho=3.0)
    assert_allclose(t, karras_grid(5, 0.1, 10.0, 3.0), rtol=0, atol=0)
    edm = EDM(sigma_min=0.01, sigma_max=5.0, rho=2.0)
    assert_array_equal(edm.grid(4), karras_grid(4, 0.01, 5.0, 2.0))
    lo, hi = VP().default_sigma_range
    assert_allclose([lo, hi], VP().sigma_tilde(np.array([1e-3, 1.0])), rtol=1e-15)
    assert_allclose(VP().grid(4)[0], 1.0, rtol=1e-14)
    assert_allclose(VPCosine().grid(4)[0], 0.999, rtol=1e-12)
    assert_allclose(Flow().grid(3)[0], 1e3 / (1 + 1e3), rtol=1e-14)
    with pytest.raises(ValueError, match="sigma_max"):
        VP().grid(4, sigma_max=1e4)
    with pytest.raises(ValueError, match="sigma_min"):
        Flow().grid(4, sigma_min=-1.0)


# ---------------------------------------------------------------------------------------------
# Factory, repr, equality
# ---------------------------------------------------------------------------------------------


def test_get_schedule_names():
    expected = {
        "ve": VE, "vp": VP, "vp-linear": VP, "vp-cosine": VPCosine, "edm": EDM, "flow": Flow, "cfdm": CFDM,
    }
    for name, cls in expected.items():
        assert type(get_schedule(name)) is cls
        assert type(get_schedule(name.upper())) is cls
    assert get_schedule("VP-Linear") == VP()
    sched = VP(0.2, 10.0)
    assert get_schedule(sched) is sched
    assert set(schedules.SCHEDULE_NAMES) == set(expected)


def test_get_schedule_errors():
    with pytest.raises(ValueError, match="schedule.*ve.*vp.*vp-cosine.*edm.*flow.*cfdm"):
        get_schedule("cosine")
    with pytest.raises(TypeError, match="schedule"):
        get_schedule(3)


def test_repr_and_equality():
    assert repr(VP()) == "VP(beta_min=0.1, beta_max=20.0)"
    assert repr(VE()) == "VE()"
    assert repr(VPCosine()) == "VPCosine(s0=0.008)"
    assert repr(EDM()) == "EDM(sigma_min=0.002, sigma_max=80.0, rho=7.0)"
    assert VP() == VP(0.1, 20.0) and VP() != VP(0.1, 19.0)
    assert VE() == VE() and VE() != EDM() and Flow() != CFDM()
    assert hash(VPCosine()) == hash(VPCosine(0.008))
    assert len({VE(), VE(), EDM()}) == 2
    for sched in ALL:
        assert isinstance(sched, Schedule)
        assert eval(repr(sched), vars(schedules)) == sched  # noqa: S307 - repr round-trip


def test_constructor_validation():
    with pytest.raises(ValueError, match="beta_min"):
        VP(beta_min=-0.1)
    with pytest.raises(ValueError, match="beta_max"):
        VP(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="s0"):
        VPCosine(s0=-0.01)
    with pytest.raises(ValueError, match="sigma_min"):
        EDM(sigma_min=0.0)
    with pytest.raises(TypeError):
        Schedule()


def test_public_names():
    for name in schedules.__all__:
        assert hasattr(schedules, name)
