"""Samplers (nnscore.sampling): convergence orders, exactness, seeding and the argument contract.

The analytic reference is Gaussian data N(mu, c^2 I) in VE coordinates, whose denoiser is
D(y, s) = (c^2 y + s^2 mu)/(c^2 + s^2) and whose probability-flow map is
y(s) = mu + (y0 - mu) sqrt((c^2 + s^2)/(c^2 + s0^2)).
"""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import nnscore as ns
from nnscore import sampling
from nnscore.sampling.noise import GUMBEL_MAX, GUMBEL_MIN, SampleNoise, philox4x32_10

SCHEDULES = ["ve", "vp", "edm", "flow", "cfdm"]


class GaussianScore:
    """Exact denoiser of N(mu, c^2 I) data under the VE schedule (a ScoreModel-like object)."""

    def __init__(self, mu, c):
        self.schedule = ns.schedules.get_schedule("ve")
        self.mu = np.asarray(mu, dtype=np.float64)
        self.c = float(c)
        self.shape = self.mu.shape
        self.dtype = np.dtype(np.float64)
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        s2 = float(t) ** 2
        c2 = self.c**2
        return (c2 * np.asarray(x, dtype=np.float64) + s2 * self.mu) / (c2 + s2)

    def flow(self, y0, s0, s):
        """Exact PF-ODE solution from (y0, s0) to noise level s."""
        return self.mu + (y0 - self.mu) * np.sqrt((self.c**2 + s**2) / (self.c**2 + s0**2))


@pytest.fixture
def gauss():
    return GaussianScore([1.0, -0.5, 2.0], 0.5)


@pytest.fixture
def y0():
    return np.array([[3.0, -4.0, 10.0], [-20.0, 5.0, 0.0]])


@pytest.fixture
def train2d():
    return np.random.default_rng(7).normal(size=(20, 2))


def _nearest_distance(samples, train):
    flat = samples.reshape(samples.shape[0], -1)
    tr = train.reshape(train.shape[0], -1)
    return np.min(np.linalg.norm(flat[:, None, :] - tr[None, :, :], axis=-1), axis=1)


def _row_index(samples, train):
    """Index of the training row equal (bitwise) to each sample, -1 where none is."""
    eq = np.all(samples[:, None, :] == train[None, :, :], axis=-1)
    return np.where(eq.any(axis=1), np.argmax(eq, axis=1), -1)


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counter, key, expected",
    [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)  # fmt: skip
def test_philox_known_answers(counter, key, expected):
    # Random123's published known-answer vectors for Philox4x32-10.
    out = tuple(int(w) for w in philox4x32_10(counter, key))
    assert out == expected


def test_noise_is_per_sample_and_standard():
    noise = SampleNoise.from_rng(123)
    full = noise.normal(10, 7, step=5)
    assert_array_equal(full[3:7], noise.shifted(3).normal(4, 7, step=5))
    u = noise.uniform(3, 0, 11, 2, 2)
    assert_array_equal(u[:, 5:9], noise.uniform(3, 5, 9, 2, 2))
    assert np.all((u > 0.0) & (u < 1.0))
    rows, cols = np.nonzero(np.ones(u.shape, dtype=bool))
    assert_array_equal(noise.uniform_at(rows, cols, 2, 2), u.ravel())  # scattered pairs, same values
    g = noise.gumbel(50, 0, 400, step=1)
    assert np.all((g > GUMBEL_MIN) & (g < GUMBEL_MAX))
    z = noise.normal(200, 1000, step=0).ravel()
    assert abs(z.mean()) < 5 * np.sqrt(1.0 / z.size)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / z.size)
    # a different step, tag or seed is a different stream
    assert not np.array_equal(full, noise.normal(10, 7, step=6))
    assert not np.array_equal(full, noise.normal(10, 7, step=5, tag=7))
    assert not np.array_equal(full, SampleNoise.from_rng(124).normal(10, 7, step=5))


# ---------------------------------------------------------------------------------------------
# Convergence orders on the Gaussian flow map
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, lo, hi", [("euler", 0.8, 1.3), ("heun", 1.7, 2.4)])
def test_convergence_order(gauss, y0, name, lo, hi):
    s0, sf = 20.0, 0.05
    exact = gauss.flow(y0, s0, sf)
    steps = np.array([8, 16, 32, 64])
    errors = []
    for n in steps:
        ts = np.geomspace(s0, sf, n + 1)  # uniform in log sigma, stopping at sigma = sf > 0
        out = sampling.SAMPLERS[name](gauss, y0, ts, progress=False)
        errors.append(np.max(np.abs(out - exact)))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert lo < slope < hi, f"{name}: observed order {slope:.3f}, errors {errors}"


def test_ddim_step_equals_euler_step(gauss, y0):
    s, s_next = 3.0, 1.7
    ts = np.array([s, s_next])
    d = gauss(y0, s)
    expected = d + (s_next / s) * (y0 - d)
    assert_allclose(sampling.ddim(gauss, y0, ts), expected, rtol=1e-12)
    assert_allclose(sampling.euler(gauss, y0, ts), expected, rtol=1e-12)
    assert_allclose(y0 + (s_next - s) * (y0 - d) / s, expected, rtol=1e-12)
    # Whole runs: DDIM is Euler in sigma~ (shared code); CFDM's and rectified flow's literal
    # Euler updates are the same step in other coordinates.
    grid = np.geomspace(20.0, 0.01, 25)
    ref = sampling.euler(gauss, y0, grid)
    assert_array_equal(sampling.ddim(gauss, y0, grid), ref)
    assert_allclose(sampling.cfdm(gauss, y0, grid), ref, rtol=1e-12)
    assert_allclose(sampling.flow_euler(gauss, y0, grid), ref, rtol=1e-12)


def test_heun_evaluations_and_last_step(gauss, y0):
    ts = gauss.schedule.grid(10)
    gauss.calls = 0
    out = sampling.heun(gauss, y0, ts)
    assert gauss.calls == 2 * 10 - 1  # no second evaluation on the step to sigma~ = 0
    # The final Euler step to sigma~ = 0 returns the denoiser exactly.
    assert np.all(np.isfinite(out))


def test_schedule_conversion_matches_ve(gauss, y0):
    # Running in VP coordinates on the same sigma~ grid gives the VE result scaled by a(t).
    vp = ns.schedules.get_schedule("vp")
    sig = np.geomspace(20.0, 0.05, 13)
    ts_vp = vp.t_from_sigma_tilde(sig)
    a = vp.alpha(ts_vp)
    for fn in (sampling.euler, sampling.heun):
        ref = fn(gauss, y0, sig)
        out = fn(gauss, a[0] * y0, ts_vp, schedule=vp)
        assert_allclose(out, a[-1] * ref, rtol=1e-11)


def test_early_stopping(gauss, y0):
    sig = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])
    stopped = sampling.euler(gauss, y0, sig, sigma_min=1.5)
    assert_allclose(stopped, sampling.euler(gauss, y0, sig[:4]), rtol=1e-14)
    denoised = sampling.heun(gauss, y0, sig, sigma_min=1.5, denoise_last=True)
    state = sampling.heun(gauss, y0, sig[:4])
    assert_allclose(denoised, gauss(state, 1.0), rtol=1e-14)


def test_float32_and_dtype(gauss, y0):
    ts = gauss.schedule.grid(8)
    x32 = y0.astype(np.float32)
    assert sampling.heun(gauss, x32, ts).dtype == np.float32
    assert sampling.heun(gauss, x32, ts, float64_state=False).dtype == np.float32
    assert sampling.heun(gauss, x32, ts, dtype=np.float64).dtype == np.float64
    assert_allclose(sampling.heun(gauss, x32, ts), sampling.heun(gauss, x32.astype(np.float64), ts), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Stochastic samplers on the Gaussian
# ---------------------------------------------------------------------------------------------


def test_tempered_langevin_stationary_law():
    # y <- y + eta s^alpha (D - y)/s^2 + sqrt(2 eta) z at fixed s has stationary law
    # p_s^(s^alpha) = N(mu, (c^2 + s^2)/s^alpha) (up to O(step) discretisation, 2.5% here).
    model = GaussianScore([1.0, -0.5], 0.5)
    out = sampling.sample(model, 2000, steps=10, sampler="tempered_langevin", sigma=0.5, alpha=1.0, n_steps=300,
                          rng=3, progress=False)  # fmt: skip
    assert_allclose(out.mean(axis=0), model.mu, atol=0.1)
    assert_allclose(out.var(axis=0), 1.0, rtol=0.1)


def test_euler_maruyama_targets_the_data_law():
    model = GaussianScore([1.0, -0.5], 0.5)
    out = sampling.sample(model, 4000, steps=200, sampler="euler_maruyama", sigma_max=20.0, sigma_min=1e-3,
                          grid="geometric", rng=5, progress=False)  # fmt: skip
    assert_allclose(out.mean(axis=0), model.mu, atol=0.05)
    assert_allclose(out.var(axis=0), 0.25, rtol=0.12)


def test_predictor_corrector_in_high_dimension():
    model = GaussianScore(np.linspace(-1.0, 1.0, 64), 0.5)
    out = sampling.sample(model, 400, steps=60, sampler="predictor_corrector", n_corrector=2, sigma_max=20.0,
                          sigma_min=1e-3, grid="geometric", rng=1, progress=False)  # fmt: skip
    assert np.all(np.isfinite(out))
    assert_allclose(out.var(axis=0).mean(), 0.25, rtol=0.15)
    batch = sampling.sample(model, 20, steps=5, sampler="predictor_corrector", snr_norm="batch", rng=1)
    assert np.all(np.isfinite(batch))


# ---------------------------------------------------------------------------------------------
# The empirical model: exact bridge and memorisation
# ---------------------------------------------------------------------------------------------


def test_exact_bridge_returns_training_points(train2d):
    model = ns.EmpiricalScore(train2d)
    out = sampling.sample(model, 300, steps=12, sampler="exact_bridge", rng=0)
    idx = _row_index(out, train2d)
    assert np.all(idx >= 0), "every sample must be a training row, bitwise"
    assert np.unique(idx).size > 5


def test_exact_bridge_frequencies_match_weights():
    train = np.array([[0.0, 0.0], [1.0, 0.0], [0.3, 0.8]])
    weights = np.array([0.2, 0.3, 0.5])
    model = ns.EmpiricalScore(train, weights=weights)
    n = 4000
    # start="data": x_T is an exact draw from the noised empirical law, so every step is exact.
    out = sampling.sample(model, n, steps=8, sampler="exact_bridge", start="data", sigma_max=2.0, rng=11)
    idx = _row_index(out, train)
    assert np.all(idx >= 0)
    freq = np.bincount(idx, minlength=3) / n
    se = np.sqrt(weights * (1 - weights) / n)
    assert np.all(np.abs(freq - weights) < 4 * se), f"frequencies {freq} vs weights {weights}"


def test_exact_bridge_tiling_invariance_and_model_check(train2d, gauss):
    model = ns.EmpiricalScore(train2d)
    x = 5.0 * np.random.default_rng(1).normal(size=(30, 2))
    ts = model.schedule.grid(6, sigma_max=5.0)
    a = sampling.exact_bridge(model, x, ts, rng=4, chunk=3)
    b = sampling.exact_bridge(model, x, ts, rng=4)
    assert_array_equal(a, b)
    with pytest.raises(TypeError, match="model"):
        sampling.exact_bridge(gauss, np.zeros((2, 3)), gauss.schedule.grid(4), rng=0)


def test_empirical_heun_memorises(train2d):
    model = ns.EmpiricalScore(train2d)
    out = sampling.sample(model, 200, steps=60, sampler="heun", rng=2)
    assert out.shape == (200, 2)
    dist = _nearest_distance(out, train2d)
    assert np.all(dist < 1e-2), f"max distance to the training set {dist.max():.3e}"


# ---------------------------------------------------------------------------------------------
# sample(): seeding, batching, trajectories, schedules, samplers, callbacks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["heun", "euler_maruyama", "exact_bridge"])
def test_sample_seeding_and_batch_invariance(train2d, name):
    model = ns.EmpiricalScore(train2d)
    a = sampling.sample(model, 37, steps=15, sampler=name, rng=5)
    assert_array_equal(a, sampling.sample(model, 37, steps=15, sampler=name, rng=5))
    assert_array_equal(a, sampling.sample(model, 37, steps=15, sampler=name, rng=5, batch_size=4))
    assert_array_equal(a, sampling.sample(model, 37, steps=15, sampler=name, rng=np.random.SeedSequence(5)))
    assert not np.array_equal(a, sampling.sample(model, 37, steps=15, sampler=name, rng=6))
    gen = np.random.default_rng(0)
    assert sampling.sample(model, 3, steps=4, sampler=name, rng=gen).shape == (3, 2)


def test_sample_trajectory(train2d):
    model = ns.EmpiricalScore(train2d, schedule="vp")
    out, traj = sampling.sample(model, 9, steps=7, sampler="euler_maruyama", rng=1, return_trajectory=True,
                                batch_size=4)  # fmt: skip
    assert out.shape == (9, 2)
    assert traj.shape == (8, 9, 2)
    assert_array_equal(traj[-1], out)
    # the first state is N(0, sigma_max^2) in VE coordinates scaled by a(t_0)
    assert np.all(np.isfinite(traj))
    again = sampling.sample(model, 9, steps=7, sampler="euler_maruyama", rng=1)
    assert_array_equal(again, out)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_runs(train2d, schedule):
    model = ns.EmpiricalScore(train2d, schedule=schedule)
    out = sampling.sample(model, 16, steps=25, sampler="heun", rng=0)
    assert out.shape == (16, 2)
    assert np.all(np.isfinite(out))
    assert np.all(_nearest_distance(out, train2d) < 0.1)


@pytest.mark.parametrize(
    "name, params",
    [
        ("euler_maruyama", {"noise_last": True}),
        ("predictor_corrector", {"n_corrector": 2}),
        ("tempered_langevin", {"n_steps": 20, "alpha": 1.5}),
        ("cfdm", {}),
        ("cfdm", {"start": "data"}),
        ("flow_euler", {}),
        ("ddim", {}),
    ],
)  # fmt: skip
def test_other_samplers_run(train2d, name, params):
    model = ns.EmpiricalScore(train2d.reshape(20, 1, 2), schedule="cfdm")
    out = sampling.sample(model, 12, steps=10, sampler=name, rng=0, **params)
    assert out.shape == (12, 1, 2)
    assert np.all(np.isfinite(out))


def test_cfdm_uniform_grid():
    sched = ns.schedules.get_schedule("cfdm")
    ts = sampling.make_grid(sched, 20, "uniform", sigma_max=(1 - 0.05) / 0.05)
    assert_allclose(ts, np.linspace(0.05, 1.0, 21), rtol=1e-12)
    assert ts[-1] == 1.0


def test_callback_keys_and_count(train2d):
    model = ns.EmpiricalScore(train2d, schedule="edm")
    seen = []
    sampling.sample(model, 5, steps=9, sampler="heun", rng=0, callback=seen.append)
    assert len(seen) == 9
    assert [info["i"] for info in seen] == list(range(9))
    for info in seen:
        assert {"x", "i", "t", "sigma", "denoised"} <= set(info)
        assert info["x"].shape == (5, 2)
        assert info["denoised"].shape == (5, 2)
    sigmas = [info["sigma"] for info in seen]
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    direct = []
    sampling.euler(model, np.zeros((3, 2)), model.schedule.grid(4), callback=direct.append)
    assert len(direct) == 4


def test_progress_options(train2d):
    model = ns.EmpiricalScore(train2d)
    a = sampling.sample(model, 4, steps=3, rng=0, progress=True)
    b = sampling.sample(model, 4, steps=3, rng=0, progress=False)
    assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Argument contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"n": 0}, ValueError, "n"),
        ({"n": 2.5}, TypeError, "n"),
        ({"steps": 0}, ValueError, "steps"),
        ({"sampler": "nope"}, ValueError, "sampler"),
        ({"sampler": 3}, TypeError, "sampler"),
        ({"grid": "nope"}, ValueError, "grid"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"dtype": np.int32}, TypeError, "dtype"),
        ({"rng": "seed"}, TypeError, "rng"),
        ({"progress": "yes"}, TypeError, "progress"),
        ({"callback": 3}, TypeError, "callback"),
        ({"sigma_max": -1.0}, ValueError, "sigma_max"),
        ({"sampler": "predictor_corrector", "snr": 0.0}, ValueError, "snr"),
        ({"sampler": "predictor_corrector", "n_corrector": -1}, ValueError, "n_corrector"),
        ({"sampler": "tempered_langevin", "n_steps": 0}, ValueError, "n_steps"),
        ({"sampler": "tempered_langevin", "sigma": -1.0}, ValueError, "sigma"),
        ({"sampler": "exact_bridge", "start": "somewhere"}, ValueError, "start"),
        ({"sampler": "tempered_langevin", "return_trajectory": True}, ValueError, "return_trajectory"),
    ],
)  # fmt: skip
def test_sample_bad_arguments(train2d, kwargs, exc, name):
    model = ns.EmpiricalScore(train2d)
    args = {"n": 3, "steps": 4, "rng": 0, **kwargs}
    with pytest.raises(exc, match=rf"^{name}:") as info:
        sampling.sample(model, **args)
    if name in ("sampler", "grid") and exc is ValueError:
        assert "valid" in str(info.value)


def test_sampler_bad_arguments(gauss, y0):
    ts = gauss.schedule.grid(5)
    with pytest.raises(ValueError, match=r"^ts:.*decreasing"):
        sampling.heun(gauss, y0, ts[::-1])
    with pytest.raises(ValueError, match=r"^ts:"):
        sampling.heun(gauss, y0, ts[:1])
    with pytest.raises(ValueError, match=r"^ts:"):
        sampling.heun(gauss, y0, np.array([1.0, -1.0]))
    bad = y0.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"^x:"):
        sampling.euler(gauss, bad, ts)
    with pytest.raises(ValueError, match=r"^x:"):
        sampling.euler(gauss, y0[0], ts)
    with pytest.raises(ValueError, match=r"^x:"):
        sampling.euler(gauss, np.zeros((2, 4)), ts)
    with pytest.raises(TypeError, match=r"^model:"):
        sampling.euler(object(), y0, ts)
    with pytest.raises(ValueError, match=r"^sigma_min:"):
        sampling.euler(gauss, y0, ts, sigma_min=-1.0)
    assert sampling.euler(gauss, np.zeros((0, 3)), ts).shape == (0, 3)
