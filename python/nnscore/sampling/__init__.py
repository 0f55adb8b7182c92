"""Samplers of the reverse diffusion over a denoiser and an explicit grid (k-diffusion style).

Every sampler is ``sampler(model, x, ts, *, schedule=None, callback=None, progress=None,
rng=None, **params) -> x_final``; :func:`sample` is the front door that draws the initial
noise, builds the grid and batches the work.  See :mod:`nnscore.sampling.samplers` for the
shared conventions and :mod:`nnscore.sampling.noise` for the batch-invariant seeding.

Example::

    import nnscore as ns
    model = ns.EmpiricalScore(train, schedule="edm")
    x = ns.sampling.sample(model, 1000, steps=60, sampler="heun", rng=0)
    # or by hand:
    ts = model.schedule.grid(60)
    x = ns.sampling.heun(model, x_T, ts, rng=0)
"""
from .noise import SampleNoise
from .samplers import (
    GRID_KINDS,
    SAMPLERS,
    cfdm,
    ddim,
    euler,
    euler_maruyama,
    exact_bridge,
    flow_euler,
    heun,
    make_grid,
    predictor_corrector,
    sample,
    tempered_langevin,
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
    "SampleNoise",
]
