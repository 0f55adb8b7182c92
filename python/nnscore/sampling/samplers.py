"""Samplers of the reverse diffusion: plain functions over a denoiser and an explicit grid.

Every sampler has the signature (k-diffusion style)::

    sampler(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, **params)

* ``model(x, t)`` returns the denoiser ``D(x, t) = E[x_0 | x_t = x]`` (shape of ``x``); the model
  carries its ``schedule`` (``model.schedule``), and ``model.shape`` is the trailing data shape.
  Samplers never see scores, noise predictions or velocities: those are adapted into ``D`` at
  the model boundary (architecture.md convention 5).
* ``x`` (B, *shape) is the initial state in the coordinates of ``schedule`` (default
  ``model.schedule``) at time ``ts[0]``.
* ``ts`` is an explicit float64 grid of that schedule's *times*, with strictly decreasing
  ``sigma~ = s/a``; it normally ends where ``sigma~ = 0`` (e.g. ``model.schedule.grid(n)``), and
  a grid ending at ``sigma~ > 0`` returns the state there.

Internally every sampler works in the VE-normalised coordinates ``y = x / a(t)``, ``sigma~ =
s(t)/a(t)`` of science.md (1.1), where the probability-flow ODE is ``dy/dsigma~ = (y - D)/sigma~``
and the reverse SDE in variance time ``theta = sigma~^2`` is ``dy = -grad log p dtheta + dW``.  The
conversion happens once at each model call (``x = a(t) y``) and at the boundary of the run.  When
``schedule`` differs from ``model.schedule`` the grid is mapped onto the model's times through
``sigma~`` (``t_model = model.schedule.t_from_sigma_tilde(sigma~)``).

Common keyword parameters
-------------------------
callback : callable, optional
    Called once per step, after the denoiser evaluation at the start of step ``i``, with a dict
    ``{"x", "i", "t", "sigma", "denoised"}``: the state (schedule coordinates, output dtype) at
    time ``t = ts[i]`` with noise level ``sigma = sigma~(t)``, and the denoiser there.
progress : None, bool or tqdm-like
    ``None``: ``tqdm(disable=None)`` (silent off a terminal, obeys ``TQDM_DISABLE``); ``False``:
    no bar; ``True``: always a bar; an object with ``update()`` is updated once per step.
rng : None, int, numpy.random.Generator, SeedSequence or SampleNoise
    Seed of the stochastic samplers (ignored by deterministic ones).  The noise of row ``k`` at
    step ``j`` is a function of the seed, ``k`` and ``j`` only (:mod:`nnscore.sampling.noise`).
sigma_min : float, optional
    Early stopping: stop at the first grid point with ``sigma~ <= sigma_min`` and return the state
    there (or its denoised mean with ``denoise_last=True``).
denoise_last : bool, default False
    Return ``D`` at the last state instead of the state, when that state is still noisy.
dtype : float32 or float64, optional
    Output dtype (default: the dtype of ``x``; integers count as float64).
float64_state : bool, default True
    Keep the state in float64 between steps (otherwise in the dtype of ``x``).

The front door :func:`sample` draws ``x_T ~ N(0, sigma_max^2 I)`` in VE coordinates, builds the
grid and runs a sampler in seeded, batch-size-invariant batches.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import schedules as _schedules
from .._validation import as_float_array, check_finite
from .._validation import check_int as _check_int
from .._validation import check_real as _check_real
from .noise import (
    GUMBEL_MAX,
    GUMBEL_MIN,
    TAG_CATEGORICAL,
    TAG_CORRECTOR,
    TAG_INIT,
    TAG_START,
    TAG_STEP,
    SampleNoise,
)

__all__ = [
    "sample",
    "make_grid",
    "euler",
    "heun",
    "ddim",
    "euler_maruyama",
    "predictor_corrector",
    "tempered_langevin",
    "exact_bridge",
    "cfdm",
    "flow_euler",
    "SAMPLERS",
    "GRID_KINDS",
]

#: Grid kinds of :func:`sample` and :func:`make_grid`: the noise grids of
#: :mod:`nnscore.schedules` plus ``"uniform"`` (uniform in the schedule's own time).
GRID_KINDS = (*_schedules.GRID_KINDS, "uniform")

#: Working-memory budget of one batch of :func:`sample` (state, denoiser, noise, temporaries).
WORKING_MEMORY = 256 * 2**20
#: Arrays of the state's size alive at once in the heaviest sampler step (state, denoiser,
#: slopes, noise and the noise generator's temporaries), used to size batches.
_STATE_COPIES = 16
#: Budget of the exact bridge's (rows x training-chunk) logit tiles.
_BRIDGE_TILE_BYTES = 32 * 2**20


# ----------------------------------------------------------------------------------------------
# Argument checking
# ----------------------------------------------------------------------------------------------


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: must be True or False, got {value!r}")
    return bool(value)


def _check_dtype(dtype, default) -> np.dtype:
    if dtype is None:
        return np.dtype(default)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: must be float32 or float64, got {dt}")
    return dt


def _model_schedules(model, schedule):
    """(user schedule, model schedule) after checking that ``model`` is a denoiser."""
    if not callable(model):
        raise TypeError(
            f"model: must be callable as model(x, t) -> denoised (a ScoreModel), got {type(model).__name__}"
        )
    msched = getattr(model, "schedule", None)
    if msched is not None and not isinstance(msched, _schedules.Schedule):
        raise TypeError(f"model: its `schedule` must be a nnscore Schedule, got {type(msched).__name__}")
    if schedule is None:
        if msched is None:
            raise TypeError("model: has no `schedule` attribute; pass schedule= to say which times ts are")
        return msched, msched
    sched = _schedules.get_schedule(schedule)
    return sched, (sched if msched is None else msched)


def _check_x(x, model) -> np.ndarray:
    arr = as_float_array(x, "x")
    shape = getattr(model, "shape", None)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        dim = int(np.prod(shape, dtype=np.int64))
        ok = arr.ndim >= 2 and (arr.shape[1:] == shape or (arr.ndim == 2 and arr.shape[1] == dim))
        if not ok:
            raise ValueError(
                f"x: expected shape (B, {', '.join(map(str, shape))}) or (B, {dim}) to match the model "
                f"(one sample is x[None]), got {arr.shape}"
            )
    elif arr.ndim < 2:
        raise ValueError(f"x: expected shape (B, *shape) (one sample is x[None]), got {arr.shape}")
    check_finite(arr, "x")
    return arr


def _check_ts(ts, sched) -> tuple[np.ndarray, np.ndarray]:
    """``ts`` as a float64 grid with strictly decreasing sigma~; returns (ts, sigma~)."""
    raw = np.asarray(ts)
    if raw.dtype.kind not in "fiu":
        raise TypeError(f"ts: must be a 1-D array of real times, got dtype {raw.dtype}")
    arr = raw.astype(np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"ts: must be a 1-D grid of at least 2 times, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("ts: must be finite")
    try:
        sig = np.asarray(sched.sigma_tilde(arr), dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"ts: not a grid of the {sched.name} schedule ({exc})") from None
    steps = np.diff(sig)
    if not np.all(steps < 0.0):
        i = int(np.flatnonzero(~(steps < 0.0))[0])
        raise ValueError(
            "ts: sigma~ = s/a must be strictly decreasing along the grid (noise to data), got "
            f"sigma~[{i}] = {sig[i]!r} <= sigma~[{i + 1}] = {sig[i + 1]!r}"
        )
    return arr, sig


def _check_rng(rng):
    """``rng`` unchanged after a type check (it is consumed only when noise is first drawn)."""
    ok = (
        rng is None
        or isinstance(rng, (SampleNoise, np.random.Generator, np.random.SeedSequence))
        or (isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)))
    )
    if not ok:
        raise TypeError(
            "rng: expected None, an int seed, a numpy.random.Generator, a SeedSequence or a SampleNoise, "
            f"got {type(rng).__name__}"
        )
    if isinstance(rng, numbers.Integral) and int(rng) < 0:
        raise ValueError(f"rng: an integer seed must be >= 0, got {int(rng)}")
    return rng


def _make_bar(progress, total: int, desc: str):
    """(bar or None, whether this call owns it and must close it)."""
    if progress is None or isinstance(progress, (bool, np.bool_)):
        if progress is not None and not progress:
            return None, False
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=None if progress is None else False), True
    if callable(getattr(progress, "update", None)) and callable(getattr(progress, "close", None)):
        return progress, False
    raise TypeError(f"progress: must be None, True, False or a tqdm-like bar, got {type(progress).__name__}")


def _rows_norm(a: np.ndarray) -> np.ndarray:
    flat = a.reshape(a.shape[0], -1)
    return np.sqrt(np.einsum("ij,ij->i", flat, flat))


def _per_row(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return values.reshape((values.shape[0],) + (1,) * (like.ndim - 1))


# ----------------------------------------------------------------------------------------------
# One run: state, conversions, callback, progress
# ----------------------------------------------------------------------------------------------


class _Run:
    """Validated inputs and the (y, sigma~) <-> (x, t) bookkeeping of one sampler call."""

    def __init__(self, name, model, x, ts, *, schedule, callback, progress, rng, dtype,
                 float64_state, sigma_min=None, denoise_last=False):  # fmt: skip
        self.name = name
        self.model = model
        self.sched, self.msched = _model_schedules(model, schedule)
        arr = _check_x(x, model)
        self.out_dtype = _check_dtype(dtype, arr.dtype)
        self.work = np.dtype(np.float64) if _check_bool(float64_state, "float64_state") else arr.dtype
        self.ts, self.sig = _check_ts(ts, self.sched)
        self.n_steps = self.ts.size - 1
        self.a_user = np.asarray(self.sched.alpha(self.ts), dtype=np.float64)
        if self.msched == self.sched:
            self.t_model, self.a_model = self.ts, self.a_user
        else:
            try:
                self.t_model = np.asarray(self.msched.t_from_sigma_tilde(self.sig), dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"ts: the grid's sigma~ is out of reach of the model's schedule ({exc})") from None
            self.a_model = np.asarray(self.msched.alpha(self.t_model), dtype=np.float64)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: must be callable or None, got {type(callback).__name__}")
        self.callback = callback
        self.sigma_min = None if sigma_min is None else _check_real(sigma_min, "sigma_min", nonneg=True)
        self.denoise_last = _check_bool(denoise_last, "denoise_last")
        self._rng = _check_rng(rng)
        self._noise = None
        self.n_rows = arr.shape[0]
        self.y = self._to_work(arr, float(self.a_user[0]))
        self._progress = progress
        self.bar = None
        self._own_bar = False

    @property
    def noise(self) -> SampleNoise:
        """The run's noise source, created on first use (deterministic samplers never draw)."""
        if self._noise is None:
            self._noise = SampleNoise.from_rng(self._rng)
        return self._noise

    # -- context: the progress bar -------------------------------------------------------------
    def __enter__(self):
        self.bar, self._own_bar = _make_bar(self._progress, self.n_steps, self.name)
        return self

    def __exit__(self, *exc):
        if self._own_bar and self.bar is not None:
            self.bar.close()
        return False

    # -- conversions ---------------------------------------------------------------------------
    def _to_work(self, arr: np.ndarray, a: float) -> np.ndarray:
        out = arr.astype(self.work, copy=True)
        if a != 1.0:
            out /= a
        return out

    def to_user(self, y: np.ndarray, a: float) -> np.ndarray:
        x = y * a if a != 1.0 else y
        return np.array(x, dtype=self.out_dtype, copy=True)

    def denoise_at(self, y: np.ndarray, t_model: float, a_model: float) -> np.ndarray:
        """D at VE state ``y`` for the model time ``t_model`` (where a = ``a_model``)."""
        xq = y * a_model if a_model != 1.0 else y
        d = np.asarray(self.model(xq, t_model))
        if d.shape != y.shape:
            if d.size != y.size:
                raise ValueError(f"model: returned denoised of shape {d.shape} for x of shape {y.shape}")
            d = d.reshape(y.shape)
        return d.astype(self.work, copy=False)

    def denoise(self, y: np.ndarray, j: int) -> np.ndarray:
        return self.denoise_at(y, float(self.t_model[j]), float(self.a_model[j]))

    # -- per-step bookkeeping ------------------------------------------------------------------
    def report(self, i: int, y: np.ndarray, d: np.ndarray, *, t=None, sigma=None, a=None) -> None:
        if self.callback is not None:
            t = float(self.ts[i]) if t is None else t
            sigma = float(self.sig[i]) if sigma is None else sigma
            a = float(self.a_user[i]) if a is None else a
            self.callback({
                "x": self.to_user(y, a),
                "i": i,
                "t": t,
                "sigma": sigma,
                "denoised": np.array(d, dtype=self.out_dtype, copy=True),
            })  # fmt: skip
        if self.bar is not None:
            self.bar.update(1)

    def stops_at(self, j: int) -> bool:
        return self.sigma_min is not None and self.sig[j] <= self.sigma_min

    def normal(self, step: int, tag: int = TAG_STEP) -> np.ndarray:
        z = self.noise.normal(self.n_rows, self.y[0].size if self.n_rows else 0, step, tag)
        return z.reshape(self.y.shape).astype(self.work, copy=False)

    def finish(self, j: int, y: np.ndarray) -> np.ndarray:
        """The result for state ``y`` at grid point ``j`` (its denoised mean if asked)."""
        if self.denoise_last and self.sig[j] > 0.0:
            d = self.denoise(y, j)
            return np.array(d, dtype=self.out_dtype, copy=True)
        return self.to_user(y, float(self.a_user[j]))

    def empty(self) -> np.ndarray:
        return np.empty(self.y.shape, dtype=self.out_dtype)

    def march(self, step) -> np.ndarray:
        """Run ``y = step(j, y, sigma_j, sigma_{j+1})`` along the grid: the loop every grid
        sampler shares (empty batches, early stopping at ``sigma_min``, the final state)."""
        if self.n_rows == 0:
            return self.empty()
        with self:
            y = self.y
            for j in range(self.n_steps):
                if self.stops_at(j):
                    return self.finish(j, y)
                y = step(j, y, float(self.sig[j]), float(self.sig[j + 1]))
            return self.finish(self.n_steps, y)


# ----------------------------------------------------------------------------------------------
# Steps in (y, sigma~): each implemented once
# ----------------------------------------------------------------------------------------------


def _ddim_step(y: np.ndarray, d: np.ndarray, s: float, s_next: float) -> np.ndarray:
    """PF-ODE Euler step in sigma~ in its exponential-integrator (DDIM) form.

    ``y + (s' - s)(y - D)/s = D + (s'/s)(y - D)``; the right-hand side is exact at ``s' = 0``
    (it returns ``D``).
    """
    if s_next == 0.0:
        return d.copy()
    out = y - d
    out *= s_next / s
    out += d
    return out


def _em_step(y, d, s, s_next, z, add_noise: bool):
    """Euler-Maruyama step of the reverse SDE in variance time (science.md §1.5 item 2).

    ``y + (s^2 - s'^2)(D - y)/s^2 + sqrt(s^2 - s'^2) z``, written as the bridge mean
    ``D + (s'^2/s^2)(y - D)`` plus noise, with ``s^2 - s'^2 = (s - s')(s + s')``.
    """
    r = s_next / s
    out = y - d
    out *= r * r
    out += d
    if add_noise:
        out += math.sqrt((s - s_next) * (s + s_next)) * z
    return out


# ----------------------------------------------------------------------------------------------
# PF-ODE samplers
# ----------------------------------------------------------------------------------------------


def _euler_march(run: _Run) -> np.ndarray:
    def step(j, y, s, s_next):
        d = run.denoise(y, j)
        run.report(j, y, d)
        return _ddim_step(y, d, s, s_next)

    return run.march(step)


def euler(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, sigma_min=None,
          denoise_last=False, dtype=None, float64_state=True):  # fmt: skip
    """Probability-flow ODE, Euler's method in sigma~ (science.md §1.5 item 1).

    ``y <- y + (sigma_{j+1} - sigma_j)(y - D(y, sigma_j)) / sigma_j`` (Karras et al. 2022, "EDM",
    eq. 3 with their Euler step; Song et al. 2021, probability flow).  First order; one denoiser
    call per step.  The step equals DDIM's (see :func:`ddim`).

    Parameters
    ----------
    model : ScoreModel-like
        ``model(x, t)`` returns the denoiser; ``model.schedule`` gives the times.
    x : (B, *shape) array_like
        Initial state at ``ts[0]`` in the coordinates of ``schedule``.
    ts : (n + 1,) array_like of float
        Times with strictly decreasing sigma~, e.g. ``model.schedule.grid(n)``.
    schedule, callback, progress, rng, sigma_min, denoise_last, dtype, float64_state
        See :mod:`nnscore.sampling.samplers`.

    Returns
    -------
    (B, *shape) ndarray
        The final state (in schedule coordinates at ``ts[-1]``; data coordinates when the grid
        ends at sigma~ = 0).
    """
    run = _Run("euler", model, x, ts, schedule=schedule, callback=callback, progress=progress, rng=rng,
               dtype=dtype, float64_state=float64_state, sigma_min=sigma_min, denoise_last=denoise_last)  # fmt: skip
    return _euler_march(run)


def ddim(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, sigma_min=None,
         denoise_last=False, dtype=None, float64_state=True):  # fmt: skip
    """Deterministic DDIM (Song, Meng & Ermon 2021, eta = 0): ``y' = D + (sigma'/sigma)(y - D)``.

    In VE coordinates DDIM's update ``x' = a' D + s' (x - a D)/s`` is the first-order exponential
    integrator of the PF-ODE and equals the Euler step in sigma~ exactly (science.md §1.5 item 1;
    Karras et al. 2022, App. B.2): this function shares :func:`euler`'s code.  Parameters and
    return value as in :func:`euler`.
    """
    run = _Run("ddim", model, x, ts, schedule=schedule, callback=callback, progress=progress, rng=rng,
               dtype=dtype, float64_state=float64_state, sigma_min=sigma_min, denoise_last=denoise_last)  # fmt: skip
    return _euler_march(run)


def heun(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, sigma_min=None,
         denoise_last=False, dtype=None, float64_state=True):  # fmt: skip
    """Probability-flow ODE, Heun's second-order method (Karras et al. 2022, Algorithm 1).

    With ``d_j = (y - D(y, sigma_j))/sigma_j``: the Euler predictor
    ``y_e = y + (sigma_{j+1} - sigma_j) d_j``; unless ``sigma_{j+1} = 0``, the corrector
    ``y <- y + (sigma_{j+1} - sigma_j)(d_j + d_e)/2`` with ``d_e = (y_e - D(y_e, sigma_{j+1}))/
    sigma_{j+1}`` (science.md §1.5 item 1).  Two denoiser calls per step (one on the last step to
    sigma~ = 0, which is an Euler step).  Parameters and return value as in :func:`euler`.
    """
    run = _Run("heun", model, x, ts, schedule=schedule, callback=callback, progress=progress, rng=rng,
               dtype=dtype, float64_state=float64_state, sigma_min=sigma_min, denoise_last=denoise_last)  # fmt: skip

    def step(j, y, s, s_next):
        d = run.denoise(y, j)
        run.report(j, y, d)
        y_e = _ddim_step(y, d, s, s_next)
        if s_next == 0.0:
            return y_e
        d_e = run.denoise(y_e, j + 1)
        slope = y - d
        slope *= 1.0 / s
        slope_e = y_e - d_e
        slope_e *= 1.0 / s_next
        slope += slope_e
        slope *= 0.5 * (s_next - s)
        return y + slope

    return run.march(step)


# ----------------------------------------------------------------------------------------------
# Stochastic samplers
# ----------------------------------------------------------------------------------------------


def euler_maruyama(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, noise_last=False,
                   sigma_min=None, denoise_last=False, dtype=None, float64_state=True):  # fmt: skip
    """Reverse SDE, Euler-Maruyama in variance time (science.md §1.5 item 2).

    ``y <- y + (sigma_j^2 - sigma_{j+1}^2)(D - y)/sigma_j^2 + sqrt(sigma_j^2 - sigma_{j+1}^2) z``
    with ``z ~ N(0, I)``: the reverse-time SDE ``dy = -grad log p dtheta + dW`` in the variance
    clock ``theta = sigma~^2`` (Song et al. 2021, "Score-based generative modeling through SDEs",
    VE reverse diffusion; FPHDP's sampler for ``v(t) = t``), score evaluated at the step's start.

    Parameters
    ----------
    noise_last : bool, default False
        Add the noise ``sigma_j z`` on a final step to sigma~ = 0 too (then the result is
        ``D + sigma_j z`` rather than ``D``).

    Other parameters and the return value as in :func:`euler`.
    """
    noise_last = _check_bool(noise_last, "noise_last")
    run = _Run("euler_maruyama", model, x, ts, schedule=schedule, callback=callback, progress=progress, rng=rng,
               dtype=dtype, float64_state=float64_state, sigma_min=sigma_min, denoise_last=denoise_last)  # fmt: skip

    def step(j, y, s, s_next):
        d = run.denoise(y, j)
        run.report(j, y, d)
        add = s_next > 0.0 or noise_last
        return _em_step(y, d, s, s_next, run.normal(j) if add else None, add)

    return run.march(step)


def _langevin_step(y, d, s, z, r, per_sample: bool):
    """One Langevin corrector step at fixed sigma~ with Song et al.'s SNR step size.

    ``g = (D - y)/s^2`` (the score in y), ``eta = 2 (r ||z|| / ||g||)^2``,
    ``y <- y + eta g + sqrt(2 eta) z`` (Song et al. 2021, Algorithm 4); the norms are per
    sample, or averaged over the batch as in the score_sde code.
    """
    g = d - y
    g *= 1.0 / (s * s)
    gn = _rows_norm(g).astype(np.float64)
    zn = _rows_norm(z).astype(np.float64)
    if not per_sample:
        gn = np.full_like(gn, gn.mean())
        zn = np.full_like(zn, zn.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.where(gn > 0.0, 2.0 * (r * zn / gn) ** 2, 0.0)
    eta = _per_row(eta.astype(y.dtype, copy=False), y)
    g *= eta
    out = y + g
    out += np.sqrt(2.0 * eta) * z
    return out


def predictor_corrector(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, n_corrector=1,
                        snr=0.16, snr_norm="sample", noise_last=False, sigma_min=None, denoise_last=False,
                        dtype=None, float64_state=True):  # fmt: skip
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2 and 4; science.md §1.5 item 4).

    Each step runs the Euler-Maruyama predictor of :func:`euler_maruyama` from sigma_j to
    sigma_{j+1}, then, unless sigma_{j+1} = 0, ``n_corrector`` Langevin steps at fixed
    sigma_{j+1}: ``y <- y + eta g + sqrt(2 eta) z`` with ``g = (D - y)/sigma^2`` and the
    signal-to-noise step ``eta = 2 (r ||z|| / ||g||)^2`` per sample.  ``1 + n_corrector`` denoiser
    calls per step.

    Parameters
    ----------
    n_corrector : int, default 1
        Langevin steps per noise level (>= 0; 0 is :func:`euler_maruyama`).
    snr : float, default 0.16
        The signal-to-noise ratio ``r`` (> 0).
    snr_norm : {"sample", "batch"}, default "sample"
        ``"sample"``: ``||z||`` and ``||g||`` per sample (results independent of batching);
        ``"batch"``: their means over the batch, as in Song et al.'s score_sde code (then the
        results depend on the batch).  The per-sample rule relies on ``||g||`` concentrating,
        i.e. on a high dimension: in 1-3 dimensions a sample near a mode gets a tiny ``||g||``
        and a huge step.
    noise_last : bool, default False
        As in :func:`euler_maruyama`.

    Other parameters and the return value as in :func:`euler`.
    """
    n_corrector = _check_int(n_corrector, "n_corrector", 0)
    if n_corrector >= (1 << 16) - TAG_CORRECTOR:
        raise ValueError(f"n_corrector: must be < {(1 << 16) - TAG_CORRECTOR}, got {n_corrector}")
    r = _check_real(snr, "snr", positive=True)
    if snr_norm not in ("sample", "batch"):
        raise ValueError(f"snr_norm: must be 'sample' or 'batch', got {snr_norm!r}")
    noise_last = _check_bool(noise_last, "noise_last")
    run = _Run("predictor_corrector", model, x, ts, schedule=schedule, callback=callback, progress=progress,
               rng=rng, dtype=dtype, float64_state=float64_state, sigma_min=sigma_min,
               denoise_last=denoise_last)  # fmt: skip

    def step(j, y, s, s_next):
        d = run.denoise(y, j)
        run.report(j, y, d)
        add = s_next > 0.0 or noise_last
        y = _em_step(y, d, s, s_next, run.normal(j) if add else None, add)
        if s_next == 0.0:
            return y
        for k in range(n_corrector):
            d = run.denoise(y, j + 1)
            y = _langevin_step(y, d, s_next, run.normal(j, TAG_CORRECTOR + k), r, snr_norm == "sample")
        return y

    return run.march(step)


def tempered_langevin(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, sigma=None,
                      alpha=1.0, eta=None, h=0.1, n_steps=1000, anneal="euler_maruyama", denoise_last=False,
                      dtype=None, float64_state=True):  # fmt: skip
    """Tempered-score (TS) Langevin dynamics at a fixed noise level (LSHH; science.md §1.5 item 5, §2.5.3).

    ``y <- y + eta sigma^alpha s(y, sigma) + sqrt(2 eta) z`` with the score in VE coordinates
    ``s = (D - y)/sigma^2``, run for ``n_steps`` steps at the fixed ``sigma``.  Its stationary law
    is ``p_sigma^(sigma^alpha)``, which for ``0 < alpha < 2`` tends to the *uniform* law on the
    data manifold as sigma -> 0 (LSHH Thms 5.1/5.2).  The default step is LSHH's practical form
    ``eta = h sigma^(2 - alpha)``, i.e. ``y <- y + h (D - y) + sqrt(2 h sigma^(2-alpha)) z``.

    The grid ``ts`` first brings ``x`` from ``ts[0]`` down to ``sigma`` with the ``anneal``
    sampler (on the grid points with sigma~ > ``sigma``, then ``sigma`` itself); with
    ``sigma >= sigma~(ts[0])`` the chain starts from ``x`` as given.

    Parameters
    ----------
    sigma : float, optional
        The fixed noise level (sigma~ units, > 0); default: the smallest positive sigma~ of ``ts``.
    alpha : float, default 1.0
        Tempering exponent (``alpha = 0`` is plain Langevin, the PC corrector).
    eta : float, optional
        Step size (> 0); default ``h * sigma**(2 - alpha)``.
    h : float, default 0.1
        Step relative to sigma^2 when ``eta`` is not given (LSHH App. C.1 used 0.1); stable
        for ``h < 2``.
    n_steps : int, default 1000
        Langevin steps (LSHH used 10^4).
    anneal : str, default "euler_maruyama"
        Name of the sampler of the annealing phase (any of :data:`SAMPLERS` but this one).
    denoise_last : bool, default False
        Return ``D(y, sigma)`` of the final chain state (a projection towards the data).

    Returns
    -------
    (B, *shape) ndarray
        The chain's final state, in schedule coordinates at the time where sigma~ = ``sigma``.

    Notes
    -----
    ``callback`` is called once per annealing step and once per Langevin step (``i`` keeps
    counting; ``sigma`` is the fixed level during the chain).
    """
    run = _Run("tempered_langevin", model, x, ts, schedule=schedule, callback=callback, progress=None, rng=rng,
               dtype=dtype, float64_state=float64_state, denoise_last=denoise_last)  # fmt: skip
    sig = run.sig
    if sigma is None:
        sigma = float(sig[sig > 0.0].min())
    sigma = _check_real(sigma, "sigma", positive=True)
    alpha = _check_real(alpha, "alpha")
    h = _check_real(h, "h", positive=True)
    if eta is None:
        try:
            eta = h * sigma ** (2.0 - alpha)
        except OverflowError:
            eta = math.inf
    else:
        eta = _check_real(eta, "eta", positive=True)
    if not (math.isfinite(eta) and eta > 0.0):
        raise ValueError(f"eta: the default h * sigma**(2 - alpha) = {eta!r} is not a positive finite step")
    n_steps = _check_int(n_steps, "n_steps", 1)
    if not isinstance(anneal, str) or anneal not in SAMPLERS or anneal == "tempered_langevin":
        valid = ", ".join(k for k in SAMPLERS if k != "tempered_langevin")
        raise ValueError(f"anneal: must be one of {valid}, got {anneal!r}")
    try:
        t_sig = float(run.sched.t_from_sigma_tilde(sigma))
        t_model = t_sig if run.msched == run.sched else float(run.msched.t_from_sigma_tilde(sigma))
    except ValueError as exc:
        raise ValueError(f"sigma: {sigma!r} is out of reach of the schedule ({exc})") from None
    a_user = float(run.sched.alpha(t_sig))
    a_model = float(run.msched.alpha(t_model))
    above = sig > sigma
    n_pre = int(np.count_nonzero(above))
    if run.n_rows == 0:
        return run.empty()

    bar, own_bar = _make_bar(progress, n_pre + n_steps, "tempered_langevin")
    try:
        y = run.y
        if n_pre:
            ts_pre = np.concatenate([run.ts[above], [t_sig]])
            x_pre = SAMPLERS[anneal](
                model, x, ts_pre, schedule=run.sched, callback=callback,
                progress=bar if bar is not None else False, rng=run.noise, dtype=np.float64,
                float64_state=run.work == np.float64,
            )  # fmt: skip
            y = run._to_work(np.asarray(x_pre), a_user)
        scale = eta * sigma**alpha / (sigma * sigma)
        noise_scale = math.sqrt(2.0 * eta)
        for k in range(n_steps):
            d = run.denoise_at(y, t_model, a_model)
            run.report(n_pre + k, y, d, t=t_sig, sigma=sigma, a=a_user)  # callback only: run.bar is None
            if bar is not None:
                bar.update(1)
            step = d - y
            step *= scale
            step += noise_scale * run.normal(n_pre + k)
            y = y + step
        if run.denoise_last:
            return np.array(run.denoise_at(y, t_model, a_model), dtype=run.out_dtype, copy=True)
        return run.to_user(y, a_user)
    finally:
        if own_bar and bar is not None:
            bar.close()


# ----------------------------------------------------------------------------------------------
# Exact ancestral sampler of the empirical model
# ----------------------------------------------------------------------------------------------


class _EmpiricalData:
    """Training rows, log-weights and centring of an EmpiricalScore-like model (float64 side data)."""

    def __init__(self, model, what: str):
        data = getattr(model, "data", None)
        train = getattr(model, "train", None)
        if data is None or train is None:
            raise TypeError(
                f"model: {what} needs the unsmoothed empirical model (an EmpiricalScore-like object exposing "
                f"`train` and `data`), got {type(model).__name__}"
            )
        pts = np.asarray(train)
        self.points = pts.reshape(pts.shape[0], -1)
        self.n = self.points.shape[0]
        log_w = getattr(data, "log_w", None)
        self.log_w = None if log_w is None else np.asarray(log_w, dtype=np.float64).reshape(self.n)
        center = getattr(data, "center", None)
        half_sq = getattr(data, "half_sqnorm", None)
        if center is None or half_sq is None:
            center = self.points.mean(axis=0, dtype=np.float64)
            half_sq = np.empty(self.n)
            for c0 in range(0, self.n, 16384):
                blk = self.points[c0 : c0 + 16384].astype(np.float64) - center
                half_sq[c0 : c0 + blk.shape[0]] = 0.5 * np.einsum("ij,ij->i", blk, blk)
        self.center = np.asarray(center, dtype=np.float64).reshape(-1)
        self.half_sq = np.asarray(half_sq, dtype=np.float64).reshape(self.n)

    def draw_prior(self, noise: SampleNoise, n_rows: int) -> np.ndarray:
        """Indices i ~ pi (the training weights), one uniform per row (inverse CDF)."""
        u = noise.uniform(n_rows, 0, 1, 0, TAG_START)[:, 0]
        if self.log_w is None:
            idx = np.floor(u * self.n).astype(np.int64)
        else:
            cdf = np.cumsum(np.exp(self.log_w))
            idx = np.searchsorted(cdf, u * cdf[-1], side="right").astype(np.int64)
        return np.minimum(idx, self.n - 1)

    def draw_posterior(self, y_rows: np.ndarray, s: float, noise: SampleNoise, step: int, chunk: int | None):
        """i ~ Categorical(lambda(y; s)) by a streaming Gumbel-max over chunks of the training set.

        Perturbed logits ``log pi_i + (<y - c, x_i - c> - ||x_i - c||^2/2)/s^2 + G_i`` (the
        row constant ``-||y - c||^2/(2 s^2)`` dropped), float64, running argmax: memory is one
        (rows x chunk) tile, never rows x N.  The Gumbel variable of (row k, point i, step j) is a
        fixed function of the seed, so the draw does not depend on the tiling.  Gumbel values
        lie in (GUMBEL_MIN, GUMBEL_MAX), so a term with ``logit + GUMBEL_MAX`` below a lower
        bound of the winning perturbed logit cannot win: its Gumbel variable is not generated
        (same draw, far fewer random numbers at small sigma).
        """
        n_rows = y_rows.shape[0]
        elems = max(1, _BRIDGE_TILE_BYTES // (8 * 8))  # ~8 float64/uint64 temporaries per tile entry
        if chunk is None:
            cols = min(self.n, max(256, elems // max(1, n_rows)))
        else:
            cols = min(self.n, chunk)
        rows_per = max(1, elems // cols)
        inv = 1.0 / (s * s)
        idx = np.empty(n_rows, dtype=np.int64)
        for r0 in range(0, n_rows, rows_per):
            r1 = min(n_rows, r0 + rows_per)
            nr = r1 - r0
            yc = y_rows[r0:r1].astype(np.float64) - self.center
            sub = noise.shifted(r0)
            best = np.full(nr, -np.inf)
            arg = np.zeros(nr, dtype=np.int64)
            for c0 in range(0, self.n, cols):
                c1 = min(self.n, c0 + cols)
                xc = self.points[c0:c1].astype(np.float64) - self.center
                lg = yc @ xc.T
                lg -= self.half_sq[c0:c1]
                lg *= inv
                if self.log_w is not None:
                    lg += self.log_w[c0:c1]
                # The winner's perturbed logit is >= max(best so far, this chunk's max + GUMBEL_MIN).
                bound = np.maximum(best, lg.max(axis=1) + GUMBEL_MIN)
                cand = (lg + GUMBEL_MAX) >= bound[:, None]
                n_cand = int(np.count_nonzero(cand))
                if 4 * n_cand >= cand.size:
                    lg += sub.gumbel(nr, c0, c1, step, TAG_CATEGORICAL)
                else:
                    rr, cc = np.nonzero(cand)
                    pert = np.full(lg.shape, -np.inf)
                    pert[rr, cc] = lg[rr, cc] + sub.gumbel_at(rr, cc + c0, step, TAG_CATEGORICAL)
                    lg = pert
                j = np.argmax(lg, axis=1)
                val = lg[np.arange(nr), j]
                upd = val > best
                best[upd] = val[upd]
                arg[upd] = c0 + j[upd]
            idx[r0:r1] = arg
        return idx


def _start_from_data(run: _Run, data: _EmpiricalData, start) -> None:
    """``start="data"``: add a training point x_i, i ~ pi, to the VE state (exact p_sigma start)."""
    if start is None or start == "noise":
        return
    if start != "data":
        raise ValueError(f"start: must be None, 'noise' or 'data', got {start!r}")
    idx = data.draw_prior(run.noise, run.n_rows)
    run.y = run.y + data.points[idx].reshape(run.y.shape).astype(run.work)


def exact_bridge(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, start=None, chunk=None,
                 sigma_min=None, denoise_last=False, dtype=None, float64_state=True):  # fmt: skip
    """Exact ancestral sampler of the (weighted) empirical model (science.md §1.3).

    From sigma to sigma' < sigma in VE coordinates: draw ``i ~ Categorical(lambda(y; sigma))``
    (the posterior weights, softmax of ``log pi_i - ||y - x_i||^2/(2 sigma^2)``), then
    ``y' ~ N(x_i + (sigma'^2/sigma^2)(y - x_i), sigma'^2 (1 - sigma'^2/sigma^2) I)``, the exact
    Brownian-bridge conditional.  Composing steps samples the empirical reverse process exactly
    (no discretisation error); ``sigma' = 0`` returns the training row ``x_i`` itself.

    The categorical draw is a streaming Gumbel-max over chunks of the training set in float64
    NumPy (O(B * chunk) memory).  Only valid for the *unsmoothed* empirical model: ``model``
    must expose ``train`` (N, d) and ``data`` (with ``log_w``, as EmpiricalScore does); the
    model's denoiser is called only for ``denoise_last``.

    Parameters
    ----------
    start : {None, "noise", "data"}, default None
        ``"data"``: ``x`` is taken as the noise part ``s(t_0) eps`` of the initial state and
        ``a(t_0) x_i`` with ``i ~ pi`` is added, which makes the start an exact draw from the
        noised empirical law (then every step is exact).
    chunk : int, optional
        Training points per tile of the Gumbel-max (default from a 32 MiB budget).  The draws
        do not depend on it.

    Other parameters and the return value as in :func:`euler`.  The callback's ``denoised`` is
    the training point drawn at that step (a posterior draw of x_0, whose mean is D).

    Raises
    ------
    TypeError
        If ``model`` does not expose ``train`` and ``data``.
    """
    data = _EmpiricalData(model, "exact_bridge")
    if chunk is not None:
        chunk = _check_int(chunk, "chunk", 1)
    run = _Run("exact_bridge", model, x, ts, schedule=schedule, callback=callback, progress=progress, rng=rng,
               dtype=dtype, float64_state=float64_state, sigma_min=sigma_min, denoise_last=denoise_last)  # fmt: skip
    row_size = int(np.prod(run.y.shape[1:], dtype=np.int64))
    if row_size != data.points.shape[1]:
        raise ValueError(f"x: samples of {row_size} values do not match the training rows of {data.points.shape[1]}")
    if run.n_rows == 0:
        return run.empty()
    _start_from_data(run, data, start)

    def step(j, y, s, s_next):
        idx = data.draw_posterior(y.reshape(run.n_rows, -1), s, run.noise, j, chunk)
        xi = data.points[idx].reshape(y.shape)
        run.report(j, y, xi)
        if s_next == 0.0:
            return xi.astype(run.work, copy=True)
        r = s_next / s
        base = xi.astype(run.work, copy=True)
        diff = y - base
        diff *= r * r
        base += diff
        base += (s_next * math.sqrt((1.0 - r) * (1.0 + r))) * run.normal(j)
        return base

    return run.march(step)


# ----------------------------------------------------------------------------------------------
# Flow-matching conventions
# ----------------------------------------------------------------------------------------------


def cfdm(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, start=None, sigma_min=None,
         denoise_last=False, dtype=None, float64_state=True):  # fmt: skip
    """Euler on the flow ODE in the CFDM convention (science.md §1.5 item 7).

    With ``a = t``, ``s = 1 - t`` (t = 0 noise, t = 1 data; CFDM's ``z_t = t x_1 + (1 - t) x_0``):
    ``z <- z + dt (D(z, t) - z)/(1 - t)``.  CFDM's own grid runs from ``t = T_start`` to 1 in
    steps of ``1/S``: build it with ``make_grid(ns.schedules.CFDM(), S, "uniform",
    sigma_max=(1 - T_start)/T_start)``.  The sampler maps any grid onto CFDM times through sigma~
    (``t_cfdm = 1/(1 + sigma~)``), and the update is carried out literally in z; it coincides
    with DDIM/Euler in sigma~ up to rounding.

    Parameters
    ----------
    start : {None, "noise", "data"}, default None
        ``"data"``: CFDM's exact start ``z_T ~ rho_T``: ``x`` is taken as the noise part of the
        initial state and a training point ``x_i``, ``i ~ pi``, scaled by ``a(t_0)``, is added
        (needs an EmpiricalScore-like model exposing ``train`` and ``data``).

    Other parameters and the return value as in :func:`euler`.
    """
    data = _EmpiricalData(model, "cfdm(start='data')") if start == "data" else None
    if start not in (None, "noise", "data"):
        raise ValueError(f"start: must be None, 'noise' or 'data', got {start!r}")
    run = _Run("cfdm", model, x, ts, schedule=schedule, callback=callback, progress=progress, rng=rng,
               dtype=dtype, float64_state=float64_state, sigma_min=sigma_min, denoise_last=denoise_last)  # fmt: skip
    if run.n_rows == 0:
        return run.empty()
    if data is not None:
        _start_from_data(run, data, start)

    def step(j, y, s, s_next):
        d = run.denoise(y, j)
        run.report(j, y, d)
        t_c = 1.0 / (1.0 + s)  # CFDM time of sigma~ = (1 - t)/t
        t_next = 1.0 / (1.0 + s_next)
        one_minus_t = s / (1.0 + s)  # 1 - t without cancellation
        dt = (s - s_next) / ((1.0 + s) * (1.0 + s_next))  # t' - t without cancellation
        z = y * t_c
        vel = d - z
        vel *= dt / one_minus_t
        z += vel
        return z / t_next if t_next != 1.0 else z

    return run.march(step)


def flow_euler(model, x, ts, *, schedule=None, callback=None, progress=None, rng=None, sigma_min=None,
               denoise_last=False, dtype=None, float64_state=True):  # fmt: skip
    """Euler on the flow-matching ODE in the rectified-flow convention (science.md §1.5 item 6).

    With ``a = 1 - t``, ``s = t`` (t = 0 data, t = 1 noise): ``x <- x + dt v`` with the velocity
    ``v = (x - D)/t`` (Liu et al. 2023; Lipman et al. 2023).  Any grid is mapped onto flow times
    through sigma~ (``t_flow = sigma~/(1 + sigma~)``) and the update is carried out literally in
    x; it coincides with DDIM/Euler in sigma~ up to rounding.  Parameters and return value as in
    :func:`euler`.
    """
    run = _Run("flow_euler", model, x, ts, schedule=schedule, callback=callback, progress=progress, rng=rng,
               dtype=dtype, float64_state=float64_state, sigma_min=sigma_min, denoise_last=denoise_last)  # fmt: skip

    def step(j, y, s, s_next):
        d = run.denoise(y, j)
        run.report(j, y, d)
        t_f = s / (1.0 + s)
        a_f, a_next = 1.0 / (1.0 + s), 1.0 / (1.0 + s_next)  # 1 - t without cancellation
        dt = (s_next - s) / ((1.0 + s) * (1.0 + s_next))
        xf = y * a_f
        vel = xf - d
        vel *= dt / t_f
        xf += vel
        return xf / a_next if a_next != 1.0 else xf

    return run.march(step)


#: Sampler functions by name.
SAMPLERS = {
    "euler": euler,
    "heun": heun,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "predictor_corrector": predictor_corrector,
    "tempered_langevin": tempered_langevin,
    "exact_bridge": exact_bridge,
    "cfdm": cfdm,
    "flow_euler": flow_euler,
}


# ----------------------------------------------------------------------------------------------
# Front door
# ----------------------------------------------------------------------------------------------


def make_grid(schedule, steps, kind="karras", sigma_min=None, sigma_max=None, rho=None) -> np.ndarray:
    """Times of ``schedule`` for a sampler: ``steps + 1`` entries ending at the data end.

    Parameters
    ----------
    schedule : Schedule or str
    steps : int
        Number of steps (>= 1).
    kind : {"karras", "geometric", "linear", "uniform"}, default "karras"
        A noise grid in sigma~ (:meth:`Schedule.grid`), or ``"uniform"``: uniform in the
        schedule's own time from ``t(sigma_max)`` to the data end (flow matching's and CFDM's
        grid; ``sigma_min`` is not used).
    sigma_min, sigma_max : float, optional
        Range in sigma~ units; defaults to ``schedule.default_sigma_range``.
    rho : float, optional
        Karras exponent.

    Returns
    -------
    (steps + 1,) float64
    """
    sched = _schedules.get_schedule(schedule)
    steps = _check_int(steps, "steps", 1)
    if not isinstance(kind, str):
        raise TypeError(f"grid: must be one of {', '.join(GRID_KINDS)}, got {kind!r}")
    key = kind.strip().lower()
    if key not in GRID_KINDS:
        raise ValueError(f"grid: unknown grid kind {kind!r}; valid kinds: {', '.join(GRID_KINDS)}")
    if key == "uniform" and sigma_min is not None:
        _check_real(sigma_min, "sigma_min", positive=True)
    if key != "uniform":
        return sched.grid(steps, kind=key, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    smax = sched.default_sigma_range[1] if sigma_max is None else _check_real(sigma_max, "sigma_max", positive=True)
    try:
        t0 = float(sched.t_from_sigma_tilde(smax))
    except ValueError:
        raise ValueError(f"sigma_max: {smax} is out of reach of the {sched.name} schedule") from None
    end = sched.data_end
    ts = t0 + (end - t0) * (np.arange(steps + 1, dtype=np.float64) / steps)
    ts[0], ts[-1] = t0, end
    return ts


def _default_sigma_max(model, sched) -> float:
    """The schedule's default sigma_max, raised to ~3x the data's radius about 0 when known."""
    smax = float(sched.default_sigma_range[1])
    data = getattr(model, "data", None)
    radius = None
    if data is not None and getattr(data, "radius", None) is not None and getattr(data, "center", None) is not None:
        radius = float(data.radius) + float(np.linalg.norm(np.asarray(data.center, dtype=np.float64)))
    elif getattr(model, "train", None) is not None:
        pts = np.asarray(model.train)
        pts = pts.reshape(pts.shape[0], -1)
        radius = 0.0
        for c0 in range(0, pts.shape[0], 16384):
            blk = pts[c0 : c0 + 16384].astype(np.float64)
            radius = max(radius, float(np.sqrt(np.einsum("ij,ij->i", blk, blk).max())))
    if radius is not None and math.isfinite(radius) and 3.0 * radius > smax:
        try:
            sched.t_from_sigma_tilde(3.0 * radius)
            smax = 3.0 * radius
        except ValueError:  # beyond the schedule's reach: keep its own maximum
            pass
    return smax


def _resolve_sampler(sampler):
    if callable(sampler):
        return sampler, getattr(sampler, "__name__", "sampler")
    if not isinstance(sampler, str):
        raise TypeError(f"sampler: must be a name ({', '.join(SAMPLERS)}) or a sampler function, got {sampler!r}")
    key = sampler.strip().lower()
    if key not in SAMPLERS:
        raise ValueError(f"sampler: unknown sampler {sampler!r}; valid names: {', '.join(SAMPLERS)}")
    return SAMPLERS[key], key


def sample(model, n, steps=100, sampler="heun", sigma_max=None, sigma_min=None, grid="karras", rng=None,
           progress=None, callback=None, return_trajectory=False, dtype=None, batch_size=None, **params):  # fmt: skip
    """Draw ``n`` samples from a score model by integrating its reverse process.

    The initial state is ``x_T ~ N(0, sigma_max^2 I)`` in VE coordinates (``y = x/a``), converted to
    the schedule's coordinates at ``t(sigma_max)``; the grid has ``steps`` steps from
    ``sigma_max`` to sigma~ = 0; the sampler runs in batches.  Noise is drawn per sample index
    from one key (:mod:`nnscore.sampling.noise`), so a seed gives the same samples whatever
    ``batch_size``.

    Parameters
    ----------
    model : ScoreModel-like
        ``model(x, t)`` returns the denoiser; needs ``schedule`` and ``shape`` (and ``dtype``).
    n : int
        Number of samples (>= 1).
    steps : int, default 100
        Number of grid steps (>= 1).
    sampler : str or callable, default "heun"
        One of :data:`SAMPLERS` (``euler``, ``heun``, ``ddim``, ``euler_maruyama``,
        ``predictor_corrector``, ``tempered_langevin``, ``exact_bridge``, ``cfdm``,
        ``flow_euler``) or a function with the sampler signature.
    sigma_max : float, optional
        Starting noise level (sigma~).  Default: the schedule's ``default_sigma_range[1]``,
        raised to 3x the data's radius about the origin for models exposing their training data
        (when the schedule can reach it).
    sigma_min : float, optional
        Smallest positive noise level of the grid (default from the schedule); the grid's last
        step goes to 0.  (Samplers called directly use ``sigma_min`` for early stopping.)
    grid : {"karras", "geometric", "linear", "uniform"}, default "karras"
        See :func:`make_grid`.
    rng : None, int, numpy.random.Generator or SeedSequence
    progress : None, bool or tqdm-like
        One bar over all batches and steps (``None``: ``tqdm(disable=None)``).
    callback : callable, optional
        As for the samplers; the dict also holds ``"samples"``, the slice of sample indices of
        the current batch.  Called ``steps`` times per batch.
    return_trajectory : bool, default False
        Also return the states at every grid point.
    dtype : float32 or float64, optional
        Output dtype (default ``model.dtype``, else float64).
    batch_size : int, optional
        Samples per batch (default: a ~256 MiB working-memory budget).
    **params
        Passed to the sampler (e.g. ``n_corrector``, ``snr``, ``noise_last``, ``alpha``,
        ``start="data"``).

    Returns
    -------
    samples : (n, *model.shape) ndarray
    trajectory : (steps + 1, n, *model.shape) ndarray
        Only with ``return_trajectory``: the state (schedule coordinates) at ``ts[0..steps]``,
        the last entry being the samples.

    Raises
    ------
    TypeError, ValueError
        On bad arguments; the message names the argument.
    """
    fn, name = _resolve_sampler(sampler)
    if "schedule" in params:
        raise TypeError("schedule: sample() runs in model.schedule's coordinates; call a sampler directly for others")
    n = _check_int(n, "n", 1)
    steps = _check_int(steps, "steps", 1)
    return_trajectory = _check_bool(return_trajectory, "return_trajectory")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: must be callable or None, got {type(callback).__name__}")
    sched, _ = _model_schedules(model, None)
    shape = getattr(model, "shape", None)
    if shape is None:
        raise TypeError("model: has no `shape` attribute (the trailing data shape); sample() needs it")
    shape = tuple(int(s) for s in shape)
    dim = int(np.prod(shape, dtype=np.int64))
    model_dtype = getattr(model, "dtype", None)
    out_dtype = _check_dtype(dtype, np.float64 if model_dtype is None else model_dtype)
    if batch_size is None:
        batch_size = max(1, WORKING_MEMORY // (8 * max(1, dim) * _STATE_COPIES))
    batch_size = min(_check_int(batch_size, "batch_size", 1), n)
    if return_trajectory and fn is tempered_langevin:
        raise ValueError("return_trajectory: not available for tempered_langevin (its chain is not on the grid)")

    smax = _default_sigma_max(model, sched) if sigma_max is None else _check_real(sigma_max, "sigma_max", positive=True)
    smin = sigma_min
    if smin is None:
        smin = min(float(sched.default_sigma_range[0]), smax)
    ts = make_grid(sched, steps, grid, sigma_min=smin, sigma_max=smax)
    sig0 = float(sched.sigma_tilde(ts[0]))
    a0 = float(sched.alpha(ts[0]))
    noise = SampleNoise.from_rng(rng)

    out = np.empty((n, *shape), dtype=out_dtype)
    traj = np.empty((steps + 1, n, *shape), dtype=out_dtype) if return_trajectory else None
    n_batches = -(-n // batch_size)
    per_batch = _tempered_count(sched, ts, params) if fn is tempered_langevin else steps
    bar, own_bar = _make_bar(progress, n_batches * per_batch, name)
    try:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            sub = noise.shifted(start)
            y0 = sub.normal(stop - start, dim, 0, TAG_INIT)
            y0 *= sig0
            if a0 != 1.0:
                y0 *= a0
            x0 = y0.reshape((stop - start, *shape))
            cb = _batch_callback(callback, traj, start, stop)
            res = fn(model, x0, ts, callback=cb, progress=bar if bar is not None else False, rng=sub,
                     dtype=out_dtype, **params)  # fmt: skip
            out[start:stop] = np.asarray(res).reshape((stop - start, *shape))
            if traj is not None:
                traj[steps, start:stop] = out[start:stop]
    finally:
        if own_bar and bar is not None:
            bar.close()
    return (out, traj) if return_trajectory else out


def _tempered_count(sched, ts, params) -> int:
    """Progress-bar steps of one tempered_langevin batch (bad values are left to the sampler)."""
    sig = np.asarray(sched.sigma_tilde(ts))
    level = params.get("sigma")
    if not isinstance(level, numbers.Real):
        level = float(sig[sig > 0].min())
    n_steps = params.get("n_steps", 1000)
    n_steps = int(n_steps) if isinstance(n_steps, numbers.Integral) else 0
    return int(np.count_nonzero(sig > level)) + max(0, n_steps)


def _batch_callback(callback, traj, start: int, stop: int):
    if callback is None and traj is None:
        return None
    where = slice(start, stop)

    def _cb(info: dict) -> None:
        if traj is not None and info["i"] < traj.shape[0] - 1:
            traj[info["i"], where] = info["x"].reshape((stop - start, *traj.shape[2:]))
        if callback is not None:
            callback({**info, "samples": where})

    return _cb
