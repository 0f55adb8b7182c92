"""Coarse scores and the hybrid sampler model (science.md §2.6, marked [R]: a reconstruction).

SHH's "coarse score" keeps only the geometric leading term of the score,

    s_c(x, t) = -(x - a P(x / a)) / s^2,                                            (2.8)

with P a projection onto (an estimate of) the data manifold M: its denoiser is P(x/a).  Below a
noise level sigma_c a reverse SDE driven by s_c is tangential Brownian motion plus a normal
contraction, so samples spread along M instead of collapsing onto training points.  The full
text of SHH is not available: this is the library's reconstruction, experimental.

Projections: an oracle (a callable or a synthetic manifold's ``project``), the affine local PCA of
the k nearest training points (:meth:`CoarseScore.from_local_pca`), or the empirical denoiser at a
projection scale h_p (:meth:`CoarseScore.from_denoiser`, a local average with inward curvature
bias O(h_p^2 / reach)).
"""
from __future__ import annotations

import numpy as np

from .. import schedules as _schedules
from .._validation import as_float_array, as_rows, check_finite, check_int, check_real
from .base import ScoreModel, schedule_coefficients
from .result import ScoreResult

__all__ = ["CoarseScore", "HybridScore"]


class CoarseScore(ScoreModel):
    """Coarse score s_c(x, t) = -(x - a P(x/a)) / s^2 of a projection P (experimental, [R]).

    Parameters
    ----------
    projection : callable (M, d) -> (M, d), or an object with ``project`` (a ``nnscore.datasets``
        manifold)
    dim : int
        Data dimension d.
    schedule : str or Schedule, default "ve"

    ``evaluate`` returns ``denoised = P(x/a)`` and ``score``; ``log_density``, ``divergence`` and
    the posterior fields are None (a coarse score has no density attached), ``path`` "coarse".
    """

    def __init__(self, projection, dim, schedule="ve"):
        if hasattr(projection, "project") and callable(projection.project):
            projection = projection.project
        if not callable(projection):
            raise TypeError(f"projection: expected a callable or an object with .project, got {type(projection).__name__}")
        self._project = projection
        self.shape = (check_int(dim, "dim", minimum=1),)
        self.schedule = _schedules.get_schedule(schedule)
        self.dtype = np.dtype(np.float64)
        self.backend = "coarse"

    @classmethod
    def from_local_pca(cls, train, dim, k_neighbors=32, schedule="ve") -> "CoarseScore":
        """P(y) = the projection of y onto the affine span (mean + top-``dim`` principal axes) of
        its ``k_neighbors`` nearest training points (science.md §2.6, choice (b), degree 1)."""
        from ..index import TrainingIndex

        x = as_rows(as_float_array(train, "train"), "train").astype(np.float64)
        check_finite(x, "train")
        n, d = x.shape
        dim = check_int(dim, "dim", minimum=1)
        k = check_int(k_neighbors, "k_neighbors", minimum=2)
        if dim >= d:
            raise ValueError(f"dim: the manifold dimension must be < d={d}, got {dim}")
        if k > n or k <= dim:
            raise ValueError(f"k_neighbors: must be in ({dim}, N={n}], got {k}")

        index = TrainingIndex(x, kind="flat")  # exact neighbours (float64 recheck)

        def project(y):
            idx = index.search(y, k).ids
            nb = x[idx]  # (M, k, d)
            mu = nb.mean(axis=1)
            _, _, vt = np.linalg.svd(nb - mu[:, None, :], full_matrices=False)
            basis = vt[:, :dim, :]  # (M, dim, d)
            coef = np.einsum("mkd,md->mk", basis, y - mu)
            return mu + np.einsum("mk,mkd->md", coef, basis)

        return cls(project, d, schedule)

    @classmethod
    def from_denoiser(cls, base, h_p) -> "CoarseScore":
        """P(y) = the base model's denoiser at VE noise level ``h_p`` (science.md §2.6, choice (c))."""
        h_p = check_real(h_p, "h_p", positive=True)
        ve = _schedules.get_schedule("ve")

        def project(y):
            if base.schedule == ve:
                return np.asarray(base.denoise(y, h_p), dtype=np.float64).reshape(y.shape)
            t = float(base.schedule.t_from_sigma_tilde(h_p))
            a = float(base.schedule.alpha(t))
            return np.asarray(base.denoise(y * a, t), dtype=np.float64).reshape(y.shape)

        return cls(project, int(np.prod(base.shape)), base.schedule)

    def evaluate(self, x, t) -> ScoreResult:
        x_rows, out_dtype = self._check_queries(x)
        alpha, s = schedule_coefficients(self.schedule, t, x_rows.shape[0])
        y = x_rows / alpha[:, None]
        proj = np.asarray(self._project(y), dtype=np.float64)
        if proj.shape != y.shape or not np.all(np.isfinite(proj)):
            raise ValueError(f"projection: returned shape {proj.shape} or non-finite values for queries {y.shape}")
        score = (alpha[:, None] * proj - x_rows) / (s * s)[:, None]
        n_q = x_rows.shape[0]
        return ScoreResult(
            denoised=proj.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            score=score.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            sigma=s / alpha,
            backend=self.backend,
            path=np.full(n_q, "coarse", dtype=object),
        )

    def __repr__(self) -> str:
        return f"CoarseScore(dim={self.dim}, schedule={self.schedule!r})"


class HybridScore(ScoreModel):
    """``high`` at noise levels sigma~ >= ``sigma_c``, ``low`` below (science.md §2.6 hybrid sampler).

    Both models must use the same schedule and data shape.  ``evaluate`` returns the denoiser and
    score of whichever model serves each query (other fields None) and ``path`` "high"/"low".
    With a reverse SDE (``euler_maruyama``) and ``low`` a :class:`CoarseScore`, samples follow the
    exact (or smoothed) model down to sigma_c, then diffuse along the manifold.
    """

    def __init__(self, high, low, sigma_c):
        if high.schedule != low.schedule:
            raise ValueError(f"low: schedule {low.schedule!r} differs from high's {high.schedule!r}")
        if tuple(high.shape) != tuple(low.shape) and int(np.prod(high.shape)) != int(np.prod(low.shape)):
            raise ValueError(f"low: data shape {low.shape} differs from high's {high.shape}")
        self.high, self.low = high, low
        self.sigma_c = check_real(sigma_c, "sigma_c", positive=True)
        self.schedule = high.schedule
        self.shape = tuple(high.shape)
        self.dtype = np.dtype(high.dtype)
        self.backend = "hybrid"

    @property
    def train(self):
        return getattr(self.high, "train", None)

    def evaluate(self, x, t) -> ScoreResult:
        x_rows, out_dtype = self._check_queries(x)
        n_q = x_rows.shape[0]
        alpha, s = schedule_coefficients(self.schedule, t, n_q)
        st = s / alpha
        t_arr = np.broadcast_to(np.asarray(t, dtype=np.float64), (n_q,))
        denoised = np.empty((n_q, self.dim))
        score = np.empty((n_q, self.dim))
        high = st >= self.sigma_c
        for model, rows in ((self.high, np.flatnonzero(high)), (self.low, np.flatnonzero(~high))):
            if rows.size:
                r = model.evaluate(x_rows[rows], t_arr[rows])
                denoised[rows] = np.asarray(r.denoised, dtype=np.float64).reshape(rows.size, -1)
                score[rows] = np.asarray(r.score, dtype=np.float64).reshape(rows.size, -1)
        return ScoreResult(
            denoised=denoised.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            score=score.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            sigma=st,
            backend=self.backend,
            path=np.where(high, "high", "low").astype(object),
        )

    def __repr__(self) -> str:
        return f"HybridScore(high={self.high!r}, low={self.low!r}, sigma_c={self.sigma_c!r})"
