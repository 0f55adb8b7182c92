"""Metrics: nearest-neighbour distances, memorisation, novelty, manifold fidelity, uniformity."""
import numpy as np
import pytest

from nnscore import metrics


class UnitCircle:
    """Minimal oracle manifold: the unit circle in the first two coordinates of R^d."""

    def distance(self, x):
        r = np.linalg.norm(x[:, :2], axis=1)
        return np.sqrt((r - 1.0) ** 2 + (x[:, 2:] ** 2).sum(1))

    def intrinsic_coords(self, x):
        return np.arctan2(x[:, 1], x[:, 0])


def brute_force(samples, train):
    d = np.sqrt(((samples[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    d.sort(axis=1)
    return d[:, 0], d[:, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_train_matches_brute_force(seed, dtype):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((400, 5)).astype(dtype)
    samples = np.concatenate([train[:10], rng.standard_normal((30, 5))]).astype(dtype)
    nt = metrics.nearest_train(samples, train)
    d1, d2 = brute_force(samples.astype(np.float64), train.astype(np.float64))
    # distances are recomputed in float64 difference form: exact to rounding
    np.testing.assert_allclose(nt.d1, d1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(nt.d2, d2, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(nt.d1[:10], 0.0)


def test_memorization_and_novelty(seed):
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((300, 3))
    copies = train[:40] + 1e-6 * rng.standard_normal((40, 3))
    fresh = rng.standard_normal((40, 3)) * 3.0
    assert metrics.memorization_fraction(copies, train) == 1.0
    assert metrics.memorized_absolute(copies, train) == 1.0
    assert metrics.memorization_fraction(fresh, train) < 0.5
    assert metrics.memorized_absolute(fresh, train) == 0.0
    s = metrics.median_nn_spacing(train)
    nov = metrics.novelty(fresh, train)
    d1, _ = brute_force(fresh, train)
    np.testing.assert_allclose(nov, d1 / s, rtol=1e-12)


def test_manifold_metrics():
    rng = np.random.default_rng(0)
    theta = rng.uniform(0, 2 * np.pi, 200)
    on = np.stack([np.cos(theta), np.sin(theta), np.zeros(200)], 1)
    off = on * 1.1
    circle = UnitCircle()
    res = metrics.distance_to_manifold(off, circle)
    np.testing.assert_allclose(res["values"], 0.1, rtol=1e-12)
    assert res["median"] == pytest.approx(0.1)
    train = on[:50]
    lat = metrics.lateral_novelty(off, train, circle)
    d1, _ = brute_force(off, train)
    # d1^2 - dist^2 cancels where the sample sits right above a training point: the square root
    # of an eps * d1^2 rounding error is ~1e-9, hence atol 1e-7.
    np.testing.assert_allclose(lat, np.sqrt(np.maximum(d1**2 - 0.01, 0)), rtol=1e-10, atol=1e-7)


def test_uniformity_circle():
    rng = np.random.default_rng(1)
    uniform = metrics.uniformity_circle(rng.uniform(0, 2 * np.pi, 20000))
    assert uniform["max_dev"] < 1.5 * uniform["noise_floor"]
    assert uniform["ks"] < 0.02
    assert uniform["w1"] < 0.02
    # all mass at one angle: W1 to uniform on a circle of length 2 pi is 2 pi / 4
    point = metrics.uniformity_circle(np.full(1000, 1.0))
    assert point["w1"] == pytest.approx(np.pi / 2, rel=1e-3)
    assert point["ks"] > 0.5


def test_bad_input():
    train = np.zeros((5, 2))
    with pytest.raises(ValueError, match="samples"):
        metrics.nearest_train(np.zeros((3, 3)), train)
    with pytest.raises(ValueError, match="k"):
        metrics.nearest_train(np.zeros((3, 2)), train, k=3)
    with pytest.raises(ValueError, match="samples"):
        metrics.nearest_train(np.full((3, 2), np.nan), train)
    with pytest.raises(ValueError, match="ratio"):
        metrics.memorization_fraction(np.zeros((3, 2)), train, ratio=0)
    with pytest.raises(TypeError, match="manifold"):
        metrics.distance_to_manifold(np.zeros((3, 2)), object())
    with pytest.raises(ValueError, match="angles"):
        metrics.uniformity_circle([])
