"""SmoothedScore: log-domain (score) smoothing of a score model (science.md §2.0-2.2).

For a location-independent kernel ``xi ~ k`` acting in x-space at time t (bandwidth h(t)),

    s_h(x, t) = E_xi[ grad log p_t(x + xi) ] = ( a E_xi[ D(x + xi) ] - x ) / s^2        (2.1)

(FPHDP eq. (6) and App. G; CFDM's sigma-smoothing).  The second form, the *control variate*
form, subtracts the exactly known linear part -(x + xi)/s^2 of every sample and puts back its
mean -x/s^2; it removes the O(h/s^2) noise of the plain ("raw") average.

Design note
-----------
* All perturbations of one evaluation go through the base model as ONE stacked batch of shape
  (n * M, *shape) (sample-major: row ``j * M + m`` is sample j of query m); the base model's
  kernels parallelise over it.  Memory is O(n M d) float64 for the draws and the per-sample
  denoisers and scores.
* Draws are independent across queries.  ``antithetic=True`` draws n/2 latent vectors z and
  uses (z, -z); the offsets of a pair are exact negatives, so the linear part of the raw
  estimator cancels exactly and stderr/McDiarmid bounds are computed over the n/2 pair means
  (independent units).
* "fresh" draws new z from the model's generator at each evaluate; "fixed" draws z once per
  (M, n_samples) and reuses it (a deterministic field: CFDM's barycentre sampler); "quadrature"
  uses Gauss-Hermite product nodes on the kernel's latent space (rank <= 3).
* Location-dependent kernels (:class:`~nnscore.TangentKernel`, :class:`~nnscore.ManifoldKernel`)
  get the query rows and alpha in ``offsets(z, scale, x, alpha)`` and the base model (for its
  training set) at binding time (:class:`~nnscore.scores.kernels.KernelContext`); the field is
  then the "score-smoothing" ``E_{Y ~ k_x} grad log p_t(Y)`` of science.md §2.2.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import threading

import numpy as np

from .._rng import check_rng
from .._validation import as_sigma
from .base import ScoreModel, schedule_coefficients
from .kernels import GaussianKernel, Kernel, KernelContext
from .result import ScoreResult

__all__ = ["SmoothedScore", "MODES", "ESTIMATORS", "SMOOTHINGS"]

#: What is smoothed (science.md §2.2): the score, or the log-density (then differentiated).
SMOOTHINGS = ("score", "log_density")
#: Randomness modes of :class:`SmoothedScore` (science.md §2.0).
MODES = ("fresh", "fixed", "quadrature")
#: Estimators of :class:`SmoothedScore`.
ESTIMATORS = ("control_variate", "raw", "stein", "taylor2")
#: Confidence level of the McDiarmid bound reported as ``error_bound``.
ERROR_BOUND_DELTA = 0.05
#: Largest latent dimension (kernel rank) for Gauss-Hermite product quadrature.
MAX_QUADRATURE_RANK = 3


def check_base_model(base, name: str = "base") -> None:
    """TypeError unless ``base`` looks like a ScoreModel (evaluate, schedule, shape, dtype)."""
    if not callable(getattr(base, "evaluate", None)):
        raise TypeError(f"{name}: expected a score model with an evaluate(x, t) method, got {type(base).__name__}")
    for attr in ("schedule", "shape", "dtype"):
        if not hasattr(base, attr):
            raise TypeError(f"{name}: the score model {type(base).__name__} has no {attr!r} attribute")


def gauss_hermite_nodes(n_per_axis: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Product Gauss-Hermite rule for E f(z), z ~ N(0, I_rank): nodes (n^rank, rank), weights."""
    x, w = np.polynomial.hermite_e.hermegauss(n_per_axis)
    w = w / math.sqrt(2.0 * math.pi)
    if rank == 0:
        return np.zeros((1, 0)), np.ones(1)
    nodes = np.array(list(itertools.product(x, repeat=rank)), dtype=np.float64).reshape(-1, rank)
    weights = np.array([math.prod(c) for c in itertools.product(w, repeat=rank)], dtype=np.float64)
    return nodes, weights


class SmoothedScore(ScoreModel):
    """Log-domain Gaussian smoothing of a score model, by Monte Carlo or quadrature.

    ``s_h(x, t) = E_xi[grad log p_t(x + xi)] = (a E_xi[D(x + xi)] - x) / s^2`` (science.md (2.1))
    with ``xi`` drawn from ``kernel`` in x-space at time t.

    Parameters
    ----------
    base : ScoreModel
        The model to smooth (e.g. :class:`~nnscore.EmpiricalScore`); its schedule, data shape and
        dtype are used.
    kernel : Kernel, float or callable
        :class:`~nnscore.GaussianKernel` or :class:`~nnscore.AnisotropicGaussianKernel`; a number
        or a callable of sigma~ is shorthand for ``GaussianKernel(kernel)``.  The
        location-dependent :class:`~nnscore.TangentKernel` (experimental; needs ``base.train``)
        and :class:`~nnscore.ManifoldKernel` (oracle; ``estimator="raw"`` only, no quadrature)
        give the score-smoothing ``E_{Y ~ k_x} grad log p_t(Y)`` (science.md §2.2).
    n_samples : int >= 1, default 256
        Monte-Carlo samples per query (even when ``antithetic``), or Gauss-Hermite nodes per
        latent axis in "quadrature" mode (``n_samples ** rank`` nodes in all).
    mode : {"fresh", "fixed", "quadrature"}
        "fresh": new draws at every ``evaluate`` from ``rng`` (an unbiased, stochastic field).
        "fixed": draws made once per batch shape (M, n_samples), cached and reused by every
        later call with that shape (a deterministic field).  "quadrature": Gauss-Hermite product
        nodes on the kernel's latent space; needs kernel rank <= 3 (data with d <= 3 for
        :class:`GaussianKernel`, or a rank <= 3 anisotropic kernel such as a tangent kernel with
        ``h_normal = 0`` on a <= 3-dim basis).
    estimator : {"control_variate", "raw", "stein", "taylor2"}
        "control_variate": ``(a mean_j D(x + xi_j) - x) / s^2``, each sample contributing
        ``(a D_j - x) / s^2``.  "raw": ``mean_j grad log p(x + xi_j)``; equal in expectation, and
        with antithetic pairs identical up to rounding (the linear part cancels exactly).
        "stein": ``E[Sigma^{-1} xi (log p(x + xi) - log p(x))]`` (science.md §2.1.5; log-density
        values only, high variance; a cross-check).  Needs a non-singular kernel and a base model
        that returns ``log_density``; the stacked batch then also holds the M queries themselves
        (the baseline log p(x), and the exact result where a callable bandwidth is 0).
        "taylor2": the deterministic small-h expansion of science.md §2.1.4,
        ``s_h ~ s + h~^2 T / (2 a sigma~^6)`` with ``h~ = h / a`` and
        ``T = sum_i lambda_i ||x_i - D||^2 (x_i - D)`` (the base's ``third_moment``: two passes over
        the training set, no draws), error O(h~^4); valid while h~ is small against the scale on
        which the posterior weights change (roughly ``h~ ||x_i - x_j|| / sigma~^2 << 1`` for the
        competing neighbours).  Needs an isotropic :class:`~nnscore.GaussianKernel` and a base
        with ``third_moment`` (:class:`~nnscore.EmpiricalScore`); ``n_samples``, ``mode``,
        ``antithetic`` and ``rng`` are not used, ``log_density`` is the expansion of
        ``E log p(x + xi)`` to the same order, ``divergence``, ``mc_stderr`` and ``error_bound``
        are None.
    antithetic : bool, default True
        Use pairs (xi, -xi) in the Monte-Carlo modes (ignored in "quadrature").
    rng : None, int or numpy.random.Generator
        Source of the draws ("fresh" and "fixed"); an int seed makes results reproducible.
    smoothing : {"score", "log_density"}, default "score"
        For a location-dependent kernel (science.md §2.2): "score" is the score-smoothing
        ``E_{Y ~ k_x} grad log p_t(Y)`` (FPHDP's code); "log_density" the gradient of the smoothed
        log-density ``grad_x E log p_t(Y(x, z))``, by the reparameterisation gradient
        ``E[(dY/dx)^T grad log p_t(Y)]`` with the same draws (each sample adds the kernel's
        ``offsets_vjp`` term; for :class:`~nnscore.ManifoldKernel` that needs the Jacobian of the
        projection, its ``jacobian`` or central differences).  The two are the same field for
        location-independent kernels and, almost everywhere, for :class:`~nnscore.TangentKernel`.
        With "fixed" draws the "log_density" field is exactly the gradient of the returned
        ``log_density`` field.

    Notes
    -----
    Fields of :meth:`evaluate`'s :class:`~nnscore.ScoreResult` (M queries):

    * ``denoised``: the smoothed denoiser ``D_h`` with ``score = (a D_h - x) / s^2``: the mean of
      the base denoisers at the perturbed points (control variate), or ``(x + s^2 score) / a``
      for the other estimators.
    * ``log_density``: the Monte-Carlo mean of the base log p_t at the perturbed points, i.e.
      ``E_xi log p_t(x + xi)``: the log of the *unnormalised* geometric-mean density
      ``exp(E log p_t(x + xi))`` of FPHDP eq. (7) (its normaliser is unknown and not included).
    * ``divergence``: the mean of the base divergence (convolution with a location-independent
      kernel commutes with the divergence); None for location-dependent kernels.
    * ``posterior_variance``, ``n_eff``, ``top1``, ``max_weight``: None (no single posterior).
    * ``mc_stderr`` (M,) float64: ``sqrt(tr Cov_hat(G_u) / n_u)`` over the n_u independent
      units u (samples, or antithetic pair means), G_u the unit's score estimate; for the control
      variate it is ``(a / s^2) sqrt(tr Cov_hat(D_u) / n_u)``.  ``inf`` when n_u < 2; None in
      "quadrature" mode.
    * ``error_bound`` (M,) float64: the McDiarmid bound of science.md §2.1.3 at
      delta = 0.05, ``(a / s^2) diam(X) (1 + sqrt(2 log(1/delta))) / sqrt(n_u)``: with probability
      >= 0.95 the Monte-Carlo error of the score (Euclidean norm) is below it.  It holds when the
      base denoiser values lie in the convex hull of ``base.train`` (exact and truncated
      empirical models) and is reported for the control-variate estimator and for "raw" with
      antithetic pairs; None otherwise (no ``base.train``, "stein", "raw" without pairs,
      "quadrature", a kernel whose offsets are not zero-mean such as ``ManifoldKernel``: the
      linear part -Y/s^2 of its samples does not cancel).  ``diam(X)`` is bounded by
      ``2 max_i ||x_i - mean||`` (computed once).  The bound covers the Monte-Carlo error; a base with certified denoiser bounds
      (``KNNScore`` with a denoiser or score ``tol_kind``) adds (a / s^2) times their mean over
      the draws (science.md §3.4), other bases' own errors are not included.
    * ``sigma``: the queries' sigma~ = s/a.

    A zero kernel (``GaussianKernel(0)``, or a zero anisotropic covariance) returns exactly the
    base result (no draws), with ``mc_stderr = 0``; so does a callable bandwidth that is 0 for
    every query.

    Cost: one base evaluation of n * M rows (n = n_samples, or n_samples ** rank nodes), plus M
    rows for "stein".
    """

    def __init__(
        self,
        base,
        kernel,
        n_samples=256,
        mode="fresh",
        estimator="control_variate",
        antithetic=True,
        rng=None,
        smoothing="score",
    ):
        check_base_model(base)
        self.base = base
        self.schedule = base.schedule
        self.shape = tuple(base.shape)
        self.dtype = np.dtype(base.dtype)
        self.backend = getattr(base, "backend", "")
        if not isinstance(kernel, Kernel):
            if callable(kernel) or (isinstance(kernel, numbers.Real) and not isinstance(kernel, bool)):
                kernel = GaussianKernel(kernel)
            else:
                raise TypeError(
                    "kernel: expected a Kernel (GaussianKernel, AnisotropicGaussianKernel, TangentKernel, "
                    "ManifoldKernel), a bandwidth or a "
                    f"callable of sigma~, got {type(kernel).__name__}"
                )
        self.kernel = kernel
        self._bound = kernel._bind(self.dim, KernelContext(base))
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
            raise TypeError(f"n_samples: expected an integer >= 1, got {n_samples!r}")
        n_samples = int(n_samples)
        if n_samples < 1:
            raise ValueError(f"n_samples: must be >= 1, got {n_samples}")
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        if not isinstance(estimator, str) or estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {list(ESTIMATORS)}, got {estimator!r}")
        if not isinstance(smoothing, str) or smoothing not in SMOOTHINGS:
            raise ValueError(f"smoothing: expected one of {list(SMOOTHINGS)}, got {smoothing!r}")
        if not isinstance(antithetic, (bool, np.bool_)):
            raise TypeError(f"antithetic: expected a bool, got {antithetic!r}")
        antithetic = bool(antithetic)
        if mode != "quadrature" and antithetic and n_samples % 2:
            raise ValueError(
                f"n_samples: must be even with antithetic=True (pairs (xi, -xi)), got {n_samples}; "
                "pass antithetic=False for an odd number of samples"
            )
        if not self._bound.zero_mean:
            if estimator != "raw":
                raise ValueError(
                    f"estimator: {type(kernel).__name__} has offsets that are not zero-mean (nor odd in the "
                    f"latent draw), so only estimator='raw' is valid, got {estimator!r} (the control variate "
                    "and Stein's identity assume a zero-mean Gaussian perturbation)"
                )
            if mode == "quadrature":
                raise ValueError(
                    f"mode: 'quadrature' needs a kernel linear in its Gaussian latent; {type(kernel).__name__} "
                    "is not (it projects onto a manifold), use 'fresh' or 'fixed'"
                )
        if mode == "quadrature" and self._bound.rank > MAX_QUADRATURE_RANK:
            raise ValueError(
                f"mode: 'quadrature' needs a kernel of rank <= {MAX_QUADRATURE_RANK} (Gauss-Hermite product "
                f"nodes), got rank {self._bound.rank} (data dimension {self.dim}); use an anisotropic "
                "kernel on a <= 3-dim basis with h_normal=0, or a Monte-Carlo mode"
            )
        if estimator == "taylor2":
            if not isinstance(kernel, GaussianKernel):
                raise ValueError(
                    "estimator: 'taylor2' is the expansion for the isotropic Gaussian kernel (science.md "
                    f"§2.1.4); got {type(kernel).__name__}, use a Monte-Carlo estimator"
                )
            if not callable(getattr(base, "third_moment", None)):
                raise TypeError(
                    f"base: estimator 'taylor2' needs the posterior's third moment (third_moment(x, t)), which "
                    f"{type(base).__name__} does not provide; use EmpiricalScore or a Monte-Carlo estimator"
                )
        if estimator == "stein" and not self._bound.static_zero and not self._bound.invertible:
            raise ValueError(
                "estimator: 'stein' needs a non-singular kernel covariance (Sigma^{-1} xi); this kernel "
                f"has rank {self._bound.rank} < d = {self.dim}"
            )
        if estimator == "stein" and not self._bound.static_zero and self._bound.location_dependent:
            raise ValueError(
                f"estimator: 'stein' needs a location-independent kernel; {type(kernel).__name__} depends on x"
            )
        self.n_samples = n_samples
        self.smoothing = smoothing
        self.mode = mode
        self.estimator = estimator
        self.antithetic = antithetic
        self._rng = check_rng(rng)
        self._lock = threading.Lock()
        self._fixed: dict[tuple[int, int], np.ndarray] = {}
        self._diam: float | None = None
        self._nodes = self._weights = None
        if mode == "quadrature":
            self._nodes, self._weights = gauss_hermite_nodes(n_samples, self._bound.rank)

    # -- public ---------------------------------------------------------------------------------
    @property
    def n_evaluations(self) -> int:
        """Base-model rows evaluated per query (samples or quadrature nodes; +1 for "stein"; 2 passes
        for "taylor2")."""
        if self.estimator == "taylor2":
            return 2
        n = self._nodes.shape[0] if self.mode == "quadrature" else self.n_samples
        return n + (self.estimator == "stein")

    def evaluate(self, x, t) -> ScoreResult:
        """Smoothed denoiser, score, log-density, divergence and Monte-Carlo error bars at (x, t).

        Parameters
        ----------
        x : array-like, (M, *shape) or (M, d), float32/float64
        t : float or (M,) array, times of the base model's schedule.

        Returns
        -------
        ScoreResult
            See the class notes for the meaning of each field.
        """
        x_rows, out_dtype = self._check_queries(x)
        n_q, dim = x_rows.shape
        alpha, s = schedule_coefficients(self.schedule, t, n_q)
        st = s / alpha
        bound = self._bound
        if bound.static_zero:
            return self._base_result(x, t, n_q)
        scale = bound.scales(st)
        if n_q and not np.any(scale > 0.0):
            return self._base_result(x, t, n_q)
        if self.estimator == "taylor2":
            return self._taylor2(x, t, alpha, s, scale)

        z, weights, n_pairs = self._draws(n_q)
        x64 = x_rows.astype(np.float64, copy=False)
        if n_pairs:
            half = bound.offsets(z, scale, x64, alpha)
            if bound.zero_mean:  # antithetic: offsets of (z, -z) are exact negatives
                off = np.concatenate([half, -half])
            else:
                off = np.concatenate([half, np.asarray(bound.offsets(-z, scale, x64, alpha))])
        else:
            off = np.asarray(bound.offsets(z, scale, x64, alpha))
        n = off.shape[0]
        stein = self.estimator == "stein"
        stack = (x64[None, :, :] + off).reshape(n * n_q, dim)
        n_rep = n + 1 if stein else n
        if stein:
            stack = np.concatenate([stack, x64])
        if np.ndim(t) == 0:
            t_stack = t
        else:
            t_stack = np.tile(as_sigma(t, n_q, "t"), n_rep)
        res = self.base.evaluate(stack.reshape((n_rep * n_q, *self.shape)), t_stack)

        rows = n_rep * n_q
        den = np.asarray(res.denoised, dtype=np.float64).reshape(rows, dim)
        sco = np.asarray(res.score, dtype=np.float64).reshape(rows, dim)
        lp = None if res.log_density is None else np.asarray(res.log_density, dtype=np.float64)
        dv = None if res.divergence is None else np.asarray(res.divergence, dtype=np.float64)
        inv_s2 = 1.0 / (s * s)

        if self.estimator == "control_variate":
            units = sco[: n * n_q].reshape(n, n_q, dim) + off * inv_s2[None, :, None]
        elif self.estimator == "raw":
            units = sco[: n * n_q].reshape(n, n_q, dim)
            if self.smoothing == "log_density" and bound.location_dependent:
                z_all = np.concatenate([z, -z]) if n_pairs else z
                extra = bound.offsets_vjp(np.broadcast_to(z_all, (n, n_q, z_all.shape[2])), scale, x64, alpha, units)
                if extra is not None:
                    units = units + extra
        else:
            if lp is None:
                raise ValueError(
                    f"estimator: 'stein' needs log_density values, which {type(self.base).__name__} does not return"
                )
            if n_pairs:
                half_dir = bound.stein_directions(z, scale, x64, alpha)
                dirs = np.concatenate([half_dir, -half_dir])
            else:
                dirs = bound.stein_directions(z, scale, x64, alpha)
            lp0 = lp[n * n_q :]
            units = dirs * (lp[: n * n_q].reshape(n, n_q) - lp0[None, :])[:, :, None]
            zero_h = scale == 0.0
            if np.any(zero_h):  # no smoothing for these queries: the exact base score at x
                units[:, zero_h, :] = sco[n * n_q :][zero_h][None, :, :]

        units = _pair_means(units, n_pairs)
        score = _weighted_mean(units, weights)
        if self.estimator == "control_variate":
            denoised = _weighted_mean(_pair_means(den[: n * n_q].reshape(n, n_q, dim), n_pairs), weights)
        else:
            denoised = (x64 + (s * s)[:, None] * score) / alpha[:, None]
        log_density = divergence = None
        if lp is not None:
            log_density = _weighted_mean(_pair_means(lp[: n * n_q].reshape(n, n_q), n_pairs), weights)
        if dv is not None and not bound.location_dependent:
            divergence = _weighted_mean(_pair_means(dv[: n * n_q].reshape(n, n_q), n_pairs), weights)

        mc_stderr = error_bound = None
        if self.mode != "quadrature":
            mc_stderr = _stderr(units)
            bounded = bound.zero_mean and (
                self.estimator == "control_variate" or (self.estimator == "raw" and n_pairs)
            )
            diam = self._diameter() if bounded else None
            if diam is not None:
                c = 1.0 + math.sqrt(2.0 * math.log(1.0 / ERROR_BOUND_DELTA))
                error_bound = (alpha * inv_s2) * diam * c / math.sqrt(units.shape[0])
                # a truncated base (KNNScore) adds its per-draw certificates B(y_m): every unit
                # moves by at most a B_m / s^2 (science.md §3.4, "Smoothed scores + NN")
                base_bound = getattr(self.base, "denoiser_error_bound", None)
                per_row = None if base_bound is None else base_bound(res, np.tile(alpha, n_rep))
                if per_row is not None:
                    b = per_row[: n * n_q].reshape(n, n_q)
                    error_bound = error_bound + (alpha * inv_s2) * np.mean(b, axis=0)
        return ScoreResult(
            denoised=denoised.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            score=score.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            log_density=log_density,
            divergence=divergence,
            sigma=st,
            backend=res.backend,
            mc_stderr=mc_stderr,
            error_bound=error_bound,
        )

    # -- helpers --------------------------------------------------------------------------------
    def _taylor2(self, x, t, alpha, s, h) -> ScoreResult:
        """science.md §2.1.4: D_h = D + h~^2 T / (2 sigma~^4), E log p = log p + (h~^2/2) Lap_y log p."""
        res, third = self.base.third_moment(x, t)
        n_q = alpha.shape[0]
        st = s / alpha
        ht2 = (h / alpha) ** 2
        shift = (ht2 / (2.0 * st**4))[:, None] * third  # denoiser units
        den = np.asarray(res.denoised, dtype=np.float64).reshape(n_q, -1) + shift
        score = np.asarray(res.score, dtype=np.float64).reshape(n_q, -1) + (alpha / (s * s))[:, None] * shift
        log_density = None
        if res.log_density is not None and res.posterior_variance is not None:
            # Laplacian in y of log p: tr Cov / sigma~^4 - d / sigma~^2 (science.md (1.7))
            lap = res.posterior_variance / st**4 - self.dim / st**2
            log_density = res.log_density + 0.5 * ht2 * lap
        out_dtype = np.asarray(res.score).dtype
        return ScoreResult(
            denoised=den.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            score=score.astype(out_dtype, copy=False).reshape((n_q, *self.shape)),
            log_density=log_density,
            sigma=st,
            backend=res.backend,
        )

    def _base_result(self, x, t, n_q: int) -> ScoreResult:
        res = self.base.evaluate(x, t)
        if res.mc_stderr is None:
            res = dataclasses.replace(res, mc_stderr=np.zeros(n_q))
        return res

    def _draws(self, n_q: int) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Latent draws z, quadrature weights (None: uniform) and the number of antithetic pairs."""
        if self.mode == "quadrature":
            return self._nodes[:, None, :], self._weights, 0
        n_draw = self.n_samples // 2 if self.antithetic else self.n_samples
        n_pairs = n_draw if self.antithetic else 0
        shape = (n_draw, n_q, self._bound.rank)
        if self.mode == "fresh":
            with self._lock:
                z = self._rng.standard_normal(shape)
            return z, None, n_pairs
        key = (n_q, self.n_samples)
        with self._lock:
            z = self._fixed.get(key)
            if z is None:
                z = self._rng.standard_normal(shape)
                z.setflags(write=False)
                self._fixed[key] = z
        return z, None, n_pairs

    def _diameter(self) -> float | None:
        """An upper bound on diam(train): 2 max_i ||x_i - mean|| (None without ``base.train``)."""
        if self._diam is None:
            radius = getattr(getattr(self.base, "data", None), "radius", None)
            if radius is None:
                train = getattr(self.base, "train", None)
                if train is None:
                    self._diam = float("nan")
                    return None
                radius = _radius(np.asarray(train))
            # 1e-12 of slack covers the rounding of the radius computation.
            self._diam = 2.0 * float(radius) * (1.0 + 1e-12)
        return None if math.isnan(self._diam) else self._diam

    def clear_cache(self) -> None:
        """Forget the draws of "fixed" mode (the next call draws new ones from ``rng``)."""
        with self._lock:
            self._fixed.clear()

    def __repr__(self) -> str:
        return (
            f"SmoothedScore(base={self.base!r}, kernel={self.kernel!r}, n_samples={self.n_samples}, "
            f"mode={self.mode!r}, estimator={self.estimator!r}, antithetic={self.antithetic}, "
            f"smoothing={self.smoothing!r})"
        )


def _pair_means(arr: np.ndarray, n_pairs: int) -> np.ndarray:
    """Independent units: antithetic pair means (samples j and j + n_pairs), else the samples."""
    if n_pairs:
        return 0.5 * (arr[:n_pairs] + arr[n_pairs:])
    return arr


def _weighted_mean(units: np.ndarray, weights) -> np.ndarray:
    if weights is None:
        return units.mean(axis=0)
    return np.tensordot(weights, units, axes=(0, 0))


def _stderr(units: np.ndarray) -> np.ndarray:
    """sqrt(tr Cov_hat / n) per query over the first axis of ``units`` (n, M, d)."""
    n = units.shape[0]
    if n < 2:
        return np.full(units.shape[1], np.inf)
    dev = units - units.mean(axis=0)[None]
    tr = np.einsum("nmd,nmd->m", dev, dev) / (n - 1)
    return np.sqrt(tr / n)


def _radius(train: np.ndarray, chunk_rows: int = 16384) -> float:
    rows = train.reshape(train.shape[0], -1)
    n, dim = rows.shape
    c = np.zeros(dim)
    for start in range(0, n, chunk_rows):
        c += rows[start : start + chunk_rows].sum(axis=0, dtype=np.float64)
    c /= n
    best = 0.0
    for start in range(0, n, chunk_rows):
        block = rows[start : start + chunk_rows].astype(np.float64) - c
        best = max(best, float(np.max(np.einsum("ij,ij->i", block, block))))
    return math.sqrt(best)
