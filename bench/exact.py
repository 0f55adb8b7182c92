#!/usr/bin/env python3
"""Exact empirical score: nnscore vs peer baselines, measured in the same run.

For every (d, N, M, sigma level) point: time (min of --repeats after a warm-up; the methods
take turns, one timed call each per round, so that a slow minute of a shared machine falls on
all of them alike and the ratios stay comparable), GFLOP/s at
4*M*N*d flops (2MNd distances + 2MNd weighted sums; skipped work is still counted, so
GFLOP/s is an *effective* rate), the fraction of numpy's sgemm rate measured in this run,
the accuracy of the float32 result against a float64 reference on the first --nref queries
(max ||D - D_ref|| / R with R = max_i ||x_i - mean||, max |log p - log p_ref|), and the
speed ratio of nnscore to each baseline (numpy_gemm: chunked BLAS + streaming LSE;
torch_sdpa: PyTorch scaled_dot_product_attention on the CPU) on the same data.

Data, sigma levels and baselines come from ../shared/baselines (common.py, impls.py):
sigma = {small: 0.1, medium: 1, large: 10} x the median held-out nearest-neighbour distance.

    python bench/exact.py                           # README grid: M=1024, N=1e5, all d
    python bench/exact.py --d 64 --N 1e6 --M 1,64,1024 --sigmas small,medium,large
Threads: --threads (default 2) for nnscore, torch and numpy's BLAS alike.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_BASELINES = HERE.parent.parent / "shared" / "baselines"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", default="2,16,64,256,784,3072")
    ap.add_argument("--N", default="1e5")
    ap.add_argument("--M", default="1024")
    ap.add_argument("--sigmas", default="small,medium,large")
    ap.add_argument("--baselines", default="numpy_gemm,torch_sdpa", help="comma list from impls.py ('' for none)")
    ap.add_argument("--baselines-dir", default=str(DEFAULT_BASELINES))
    ap.add_argument("--cells", default="auto",
                    help="also time EmpiricalScore(cells=...) ('auto' or a number of cells; 'none': skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (each method once per round)")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="pause (s) before each timed call: idle BLAS/OpenMP workers of the previous method stop spinning")
    ap.add_argument("--max-run", type=float, default=20.0, help="skip points predicted slower than this (s)")
    ap.add_argument("--max-x-gb", type=float, default=4.0)
    ap.add_argument("--nref", type=int, default=16)
    ap.add_argument("--data", default="manifold", choices=["manifold", "gaussian"])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="append one JSON record per point")
    ap.add_argument("--markdown", action="store_true")
    return ap.parse_args(argv)


class NNScoreMethod:
    """Adapter with the baselines' prepare(X) / run(Y, sigma) -> (D, lse) protocol.

    ``cells`` (EmpiricalScore's option) makes the "nnscore_cells" method: the exact engine with
    cell skipping; its one-off partition time is kept in ``build_s``."""

    def __init__(self, threads, cells=None):
        import nnscore as ns

        self.ns = ns
        self.threads = threads
        self.cells = cells
        self.name = "nnscore" if cells is None else "nnscore_cells"

    def prepare(self, X):
        t0 = time.perf_counter()
        self.model = self.ns.EmpiricalScore(X, backend="cpp", n_threads=self.threads, cells=self.cells)
        self.build_s = time.perf_counter() - t0
        self.N, self.d = X.shape

    def run(self, Y, sigma):
        res = self.model.evaluate(Y, sigma)
        # lse of the baselines: logsumexp_i(-||y - x_i||^2 / (2 sigma^2))
        lse = res.log_density + math.log(self.N) + 0.5 * self.d * math.log(2 * math.pi * sigma * sigma)
        return res.denoised, lse


def interleaved_bench(common, calls: dict, repeats: int, settle: float) -> dict:
    """Time ``calls`` ({name: fn}) in turns: one warm-up each (its peak memory recorded, as
    common.bench does), then ``repeats`` rounds of one timed call per method.  Returns {name:
    dict(min, median, runs, peak_extra_mb, out)}."""
    import statistics

    out = {name: common.bench(fn, repeats=0, warmup=1, settle=settle) for name, fn in calls.items()}
    times: dict = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            time.sleep(settle)
            t0 = time.perf_counter()
            out[name]["out"] = fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        if ts:
            out[name].update(min=min(ts), median=statistics.median(ts), runs=len(ts))
    return out


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("NNSCORE_NUM_THREADS", str(args.threads))
    sys.path.insert(0, args.baselines_dir)
    import common  # noqa: E402  (shared baselines)
    import impls  # noqa: E402
    from threadpoolctl import threadpool_limits

    import nnscore as ns

    threadpool_limits(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    info = ns._info.info_dict()
    core = info.get("core") or {}
    sgemm = max(common.quick_sgemm_gflops() for _ in range(3))  # best of 3: the first can lose to thread start-up
    print(f"# nnscore {ns.__version__} simd={core.get('simd_used')} compiler={core.get('compiler')} "
          f"threads={args.threads}; numpy sgemm {sgemm:.1f} GFLOP/s; torch {info['torch']}", flush=True)

    baselines = [b for b in args.baselines.split(",") if b]
    if torch is None:
        baselines = [b for b in baselines if not b.startswith("torch")]
    rows = []
    rate: dict = {}
    for d in common.parse_list(args.d, int):
        for N in common.parse_list(args.N, int):
            if 4.0 * N * d / 2**30 > args.max_x_gb:
                print(f"# skip d={d} N={N}: X larger than --max-x-gb", flush=True)
                continue
            X = common.get_data(args.data, N, d, 0, args.cache_dir)
            levels = [s for s in args.sigmas.split(",") if s]
            _, sig = common.sigma_grid(args.data, X, levels, n_probe=128)
            R = float(np.sqrt(((X.astype(np.float64) - X.mean(0, dtype=np.float64)) ** 2).sum(1).max()))
            methods = [NNScoreMethod(args.threads)] + [impls.make(b) for b in baselines]
            if args.cells != "none":
                methods.insert(1, NNScoreMethod(args.threads, int(args.cells) if args.cells.isdigit() else args.cells))
            for meth in methods:
                meth.prepare(X)
            cells_build = {m.name: m.build_s for m in methods if m.name == "nnscore_cells"}
            for M in common.parse_list(args.M, int):
                for lvl in levels:
                    Y = common.make_queries(args.data, M, d, sig[lvl], seed=1)
                    Dr, lr = common.reference_f64(X, Y[: args.nref], sig[lvl])
                    flops = common.score_flops(M, N, d)
                    rec = {"d": d, "N": N, "M": M, "sigma": lvl, "sigma_value": sig[lvl]}
                    calls = {}
                    for meth in methods:
                        r = rate.get((meth.name, d))
                        if r and flops / r > args.max_run:
                            rec[f"{meth.name}_s"] = None
                            continue
                        calls[meth.name] = (lambda m=meth: m.run(Y, sig[lvl]))
                    timed = interleaved_bench(common, calls, args.repeats, args.settle)
                    for name, res in timed.items():
                        D, lse = res["out"]
                        D = np.asarray(D, dtype=np.float64)[: args.nref]
                        lse = np.asarray(lse, dtype=np.float64).reshape(-1)[: args.nref]
                        rate[(name, d)] = max(rate.get((name, d), 0.0), flops / res["min"])
                        rec[f"{name}_s"] = res["min"]
                        rec[f"{name}_gflops"] = flops / res["min"] / 1e9
                        rec[f"{name}_errD"] = float(np.linalg.norm(D - Dr, axis=1).max() / R)
                        rec[f"{name}_errlogp"] = (float(np.abs(lse - lr).max())
                                                  if np.all(np.isfinite(lse)) else None)
                        if name == "nnscore":
                            rec["peak_mb"] = res["peak_extra_mb"]
                    rec["pct_sgemm"] = 100 * rec.get("nnscore_gflops", 0) / sgemm
                    if cells_build:
                        rec["cells_build_s"] = cells_build["nnscore_cells"]
                    for b in baselines:
                        if rec.get(f"{b}_s") and rec.get("nnscore_s"):
                            rec[f"x_{b}"] = rec[f"{b}_s"] / rec["nnscore_s"]
                        if rec.get(f"{b}_s") and rec.get("nnscore_cells_s"):
                            rec[f"x_{b}_cells"] = rec[f"{b}_s"] / rec["nnscore_cells_s"]
                    rows.append(rec)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                    print("  " + " ".join(f"{k}={common.fmt(v)}" for k, v in rec.items() if k != "sigma_value"),
                          flush=True)
    cols = [("d", "d"), ("N", "N"), ("M", "M"), ("sigma", "sigma"), ("nnscore_s", "time s"),
            ("nnscore_gflops", "GFLOP/s"), ("pct_sgemm", "% sgemm"), ("nnscore_errD", "err D/R"),
            ("nnscore_errlogp", "err log p")]
    for b in baselines:
        cols += [(f"{b}_gflops", f"{b} GFLOP/s"), (f"{b}_errD", f"{b} err D/R"), (f"x_{b}", f"x {b}")]
    if args.cells != "none":
        cols += [("nnscore_cells_s", "cells: time s"), ("nnscore_cells_errD", "cells: err D/R"),
                 ("cells_build_s", "cells: build s")]
        cols += [(f"x_{b}_cells", f"cells: x {b}") for b in baselines]
    common.print_table(rows, cols, f"nnscore exact engine, float32, {args.threads} threads (sgemm {sgemm:.0f} GFLOP/s)",
                       markdown=args.markdown)


if __name__ == "__main__":
    main()
