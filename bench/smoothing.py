#!/usr/bin/env python3
"""SmoothedScore: cost per smoothed evaluation vs n_samples, and error vs cost per estimator.

Data: the clustered ('manifold') float32 training set of ../shared/baselines/common.py
(default N = 1e5, d = 64), M queries y = x0 + sigma * eps at one sigma level (default
'medium' = 1 x the median held-out nearest-neighbour distance), VE schedule (t = sigma), and
an isotropic kernel ns.GaussianKernel(h) with h = --h-rel * sigma (default 0.5 sigma).

(1) Cost table: time (min of --repeats after a warm-up) of one SmoothedScore.evaluate on the
    M queries for n_samples in --cost-n (control_variate; antithetic when n is even), per
    evaluate and per perturbed base row (M * n rows), against the plain base evaluate on the
    same M queries.  Bases: the exact EmpiricalScore and KNNScore (IVF, tol --knn-tol on ||dD||/R;
    at sigma = medium most of its queries fall back to the exact engine).
(2) Error-vs-cost table: for each estimator in --estimators and n_samples in --err-n,
    relative RMS error of the smoothed score against a high-sample reference,

        err = sqrt( sum_{seeds, m} ||s_m - s_ref_m||^2 / (n_seeds * sum_m ||s_ref_m||^2) ),

    i.e. pooled over the M queries and --seeds independent draws (rng = seed), with the time of
    one evaluate (min over the seeds; no separate warm-up).  The reference is the control-variate antithetic estimator with
    --ref-samples draws (default 4096, as --ref-chunk-sized independent batches averaged) from
    its own seed; its own relative Monte-Carlo error (from mc_stderr) is printed and is the
    floor of the measurable err.  'pred' is the estimator's own prediction
    sqrt(sum_m mc_stderr_m^2 / sum_m ||s_ref_m||^2) (RMS over seeds), to check mc_stderr.
    'err*sqrt(t)' compares estimators at equal cost (lower is better).
    taylor2 is deterministic (no draws): one row, the same time for any n_samples, its err is the
    O(h~^4) truncation of the expansion (no 'pred').

    python bench/smoothing.py                          # README tables (~3.5 min on 2 cores)
    python bench/smoothing.py --N 20000 --M 16         # quick check
    python bench/smoothing.py --markdown --out smoothing.jsonl
Threads: --threads (default 2) for nnscore (NNSCORE_NUM_THREADS) and numpy's BLAS (threadpoolctl).
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

# name -> (estimator, antithetic)
ESTIMATOR_SPECS = {
    "control_variate": ("control_variate", False),
    "control_variate+antithetic": ("control_variate", True),
    "raw": ("raw", False),
    "raw+antithetic": ("raw", True),
    "stein": ("stein", False),
    "stein+antithetic": ("stein", True),
    "taylor2": ("taylor2", False),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--N", type=float, default=1e5)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--M", type=int, default=64)
    ap.add_argument("--sigma", default="medium", choices=["small", "medium", "large"])
    ap.add_argument("--h-rel", type=float, default=0.5, help="kernel bandwidth h = h_rel * sigma")
    ap.add_argument("--data", default="manifold", choices=["manifold", "gaussian"])
    ap.add_argument("--cost-n", default="1,4,16,64,256")
    ap.add_argument("--err-n", default="4,16,64,256")
    ap.add_argument("--estimators", default="control_variate,control_variate+antithetic,raw,raw+antithetic,"
                    "stein,stein+antithetic,taylor2", help=f"comma list from {list(ESTIMATOR_SPECS)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ref-samples", type=int, default=4096)
    ap.add_argument("--ref-chunk", type=int, default=512, help="draws per reference evaluate (memory)")
    ap.add_argument("--knn-tol", type=float, default=1e-4, help="KNNScore base tolerance (denoiser_rel)")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-error", action="store_true")
    ap.add_argument("--baselines-dir", default=str(DEFAULT_BASELINES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-total", type=float, default=5.0, help="stop timed repeats of one point after this (s)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="append one JSON record per table row")
    ap.add_argument("--markdown", action="store_true")
    return ap.parse_args(argv)


def write(out, rec):
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")


def sq_norms(a):
    a = np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)
    return np.einsum("ij,ij->i", a, a)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("NNSCORE_NUM_THREADS", str(args.threads))
    sys.path.insert(0, args.baselines_dir)
    import common  # noqa: E402  (shared baselines)
    from threadpoolctl import threadpool_limits

    import nnscore as ns
    from nnscore.scores.smoothed import ESTIMATORS

    threadpool_limits(args.threads)
    info = ns._info.info_dict()
    core = info.get("core") or {}
    N, d, M = int(args.N), args.d, args.M
    t_start = time.perf_counter()
    X = common.get_data(args.data, N, d, 0, args.cache_dir)
    r_nn, sig = common.sigma_grid(args.data, X, [args.sigma], n_probe=128)
    sigma = sig[args.sigma]
    h = args.h_rel * sigma
    Y = common.make_queries(args.data, M, d, sigma, seed=1)
    base = ns.EmpiricalScore(X, backend="cpp", n_threads=args.threads)
    kernel = ns.GaussianKernel(h)
    row_flops = 4.0 * N * d  # nominal flops of one base row (skipped work counted)
    print(f"# nnscore {ns.__version__} simd={core.get('simd_used')} compiler={core.get('compiler')} "
          f"threads={args.threads}; data={args.data} N={N} d={d} M={M} float32; sigma={args.sigma} "
          f"= {sigma:.4g} (r_nn={r_nn:.4g}); kernel GaussianKernel(h={h:.4g} = {args.h_rel:g} sigma)", flush=True)
    md = args.markdown

    # ---------------------------------------------------------------- (1) cost vs n_samples
    if not args.skip_cost:
        rows = []
        knn = ns.KNNScore(X, tol=args.knn_tol, n_threads=args.threads)
        for bname, bmodel in (("exact", base), (f"knn (tol {args.knn_tol:g})", knn)):
            bres = common.bench(lambda: bmodel.evaluate(Y, sigma), repeats=args.repeats, warmup=1,
                                max_total=args.max_total)
            t_base = bres["min"]
            rec = {"table": "cost", "base": bname, "n_samples": 0, "rows": M, "time_s": t_base,
                   "ms_per_row": 1e3 * t_base / M, "x_base": 1.0, "gflops": M * row_flops / t_base / 1e9}
            rows.append(rec)
            write(args.out, rec)
            for n in common.parse_list(args.cost_n, int):
                anti = n % 2 == 0
                sm = ns.SmoothedScore(bmodel, kernel, n_samples=n, estimator="control_variate", antithetic=anti, rng=0)
                res = common.bench(lambda: sm.evaluate(Y, sigma), repeats=args.repeats, warmup=1,
                                   max_total=args.max_total)
                nrow = M * sm.n_evaluations
                rec = {"table": "cost", "base": bname, "n_samples": n, "antithetic": anti, "rows": nrow,
                       "time_s": res["min"], "ms_per_row": 1e3 * res["min"] / nrow, "x_base": res["min"] / t_base,
                       "gflops": nrow * row_flops / res["min"] / 1e9, "peak_mb": res["peak_extra_mb"]}
                rows.append(rec)
                write(args.out, rec)
                print("  " + " ".join(f"{k}={common.fmt(v)}" for k, v in rec.items()), flush=True)
        cols = [("base", "base"), ("n_samples", "n_samples"), ("rows", "base rows"), ("time_s", "time s"),
                ("ms_per_row", "ms/row"), ("x_base", "x base eval"), ("gflops", "eff. GFLOP/s"),
                ("peak_mb", "peak MB")]
        common.print_table(rows, cols, f"SmoothedScore cost per evaluate (M={M}, control_variate, antithetic "
                           f"for even n; n_samples=0: the unsmoothed base), N={N}, d={d}, {args.threads} threads",
                           markdown=md)

    # ---------------------------------------------------------------- (2) error vs cost
    if not args.skip_error:
        names = [e for e in args.estimators.split(",") if e]
        for e in names:
            if e not in ESTIMATOR_SPECS:
                raise SystemExit(f"--estimators: unknown {e!r}; choose from {list(ESTIMATOR_SPECS)}")
        # reference: antithetic control variate, ref-samples draws in ref-chunk batches
        chunk = min(args.ref_chunk, args.ref_samples)
        chunk -= chunk % 2
        n_chunks = max(1, args.ref_samples // chunk)
        sm_ref = ns.SmoothedScore(base, kernel, n_samples=chunk, estimator="control_variate", antithetic=True,
                                  rng=np.random.default_rng([12345, 7]))
        t0 = time.perf_counter()
        acc = np.zeros((M, d))
        var = np.zeros(M)
        for _ in range(n_chunks):
            r = sm_ref.evaluate(Y, sigma)
            acc += np.asarray(r.score, dtype=np.float64).reshape(M, d)
            var += np.asarray(r.mc_stderr, dtype=np.float64) ** 2
        t_ref = time.perf_counter() - t0
        s_ref = acc / n_chunks
        ref_norm2 = float(sq_norms(s_ref).sum())
        ref_rel = math.sqrt(var.sum() / n_chunks ** 2 / ref_norm2)
        print(f"# reference: control_variate+antithetic, {n_chunks * chunk} draws per query "
              f"({n_chunks} x {chunk}), {t_ref:.1f} s; its relative MC error (mc_stderr) = {ref_rel:.3g} "
              f"(floor of the err column)", flush=True)

        rows = []
        for name in names:
            est, anti = ESTIMATOR_SPECS[name]
            if est not in ESTIMATORS:
                rec = {"table": "error", "estimator": name, "note": "not implemented in nnscore yet: skipped"}
                rows.append(rec)
                write(args.out, rec)
                print(f"  {name}: not implemented in nnscore yet (estimators: {list(ESTIMATORS)}): skipped",
                      flush=True)
                continue
            deterministic = est == "taylor2"
            for n in [2] if deterministic else common.parse_list(args.err_n, int):
                if anti and n % 2:
                    continue
                err2 = pred2 = 0.0
                times = []
                for seed in range(1 if deterministic else args.seeds):
                    sm = ns.SmoothedScore(base, kernel, n_samples=n, estimator=est, antithetic=anti, rng=seed)
                    t0 = time.perf_counter()
                    r = sm.evaluate(Y, sigma)
                    times.append(time.perf_counter() - t0)
                    s = np.asarray(r.score, dtype=np.float64).reshape(M, d)
                    err2 += float(sq_norms(s - s_ref).sum())
                    if r.mc_stderr is not None:
                        pred2 += float((np.asarray(r.mc_stderr, dtype=np.float64) ** 2).sum())
                n_runs = 1 if deterministic else args.seeds
                err = math.sqrt(err2 / (n_runs * ref_norm2))
                pred = math.nan if deterministic else math.sqrt(pred2 / (n_runs * ref_norm2))
                t_med = min(times)
                rec = {"table": "error", "estimator": name, "n_samples": "-" if deterministic else n,
                       "rows": M * sm.n_evaluations,
                       "time_s": t_med, "rel_rms_err": err, "pred_rel_err": pred, "err_sqrt_t": err * math.sqrt(t_med),
                       "ref_rel_err": ref_rel, "seeds": args.seeds, "note": ""}
                rows.append(rec)
                write(args.out, rec)
                print("  " + " ".join(f"{k}={common.fmt(v)}" for k, v in rec.items()), flush=True)
        cols = [("estimator", "estimator"), ("n_samples", "n_samples"), ("rows", "base rows"), ("time_s", "time s"),
                ("rel_rms_err", "rel RMS err"), ("pred_rel_err", "pred (mc_stderr)"), ("err_sqrt_t", "err*sqrt(t)"),
                ("note", "note")]
        if not any(r.get("note") for r in rows):
            cols = cols[:-1]
        common.print_table(rows, cols, f"SmoothedScore error vs cost (exact base, M={M}, {args.seeds} seeds; "
                           f"reference: {n_chunks * chunk} antithetic control-variate draws, rel. MC error "
                           f"{ref_rel:.2g})", markdown=md)
    print(f"# total {time.perf_counter() - t_start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
