#!/usr/bin/env python3
"""How much of the training set an exact engine must touch, per noise level.

For the README grid's data (../shared/baselines: clustered, sigma = 0.1 / 1 / 10 x the median
nearest-neighbour distance) and M queries, prints per (d, sigma level):

* live terms: the fraction of (query, point) pairs whose logit is within log_cut = log N + 25 of
  the query's max (float64): the terms the dense kernels may not skip;
* live rows (cells): the fraction of rows in the cells that cell skipping
  (``EmpiricalScore(cells="auto")``, sqrt(N)/2 cells) cannot rule out, with the certified cell
  bounds and the *exact* max logit (the least any cell skipping with these bounds must scan).

No engine pays for fewer flops than 2 N d (live rows) + 2 N d (live terms) per query, against
4 N d for attention kernels such as SDPA: this bounds the speed-up at equal GEMM efficiency.

    python bench/live_terms.py --d 16,64,256 --N 1e5
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", default="16,64,256")
    ap.add_argument("--N", default="1e5")
    ap.add_argument("--M", type=int, default=256)
    ap.add_argument("--sigmas", default="small,medium,large")
    ap.add_argument("--baselines-dir", default=str(HERE.parent.parent / "shared" / "baselines"))
    args = ap.parse_args(argv)
    sys.path.insert(0, args.baselines_dir)
    import common  # noqa: E402  (shared baselines)

    import nnscore as ns

    n = int(float(args.N))
    print("| d | sigma | live terms | live rows (cells) | bound on x SDPA at equal GEMM rate |")
    print("|---|---|---|---|---|")
    for d in common.parse_list(args.d, int):
        x = common.make_data("manifold", n, d)
        _, sig = common.sigma_grid("manifold", x, args.sigmas.split(","), n_probe=128)
        index = ns.TrainingIndex(x, kind="ivf", nlist=max(1, round(0.5 * math.sqrt(n))), rng=0)
        sizes = np.diff(index.cell_offsets)
        x64 = x.astype(np.float64)
        xn = np.einsum("ij,ij->i", x64, x64)
        log_cut = math.log(n) + 25.0
        for lvl in args.sigmas.split(","):
            s = sig[lvl]
            y = common.make_queries("manifold", args.M, d, s).astype(np.float64)
            logits = -(np.einsum("ij,ij->i", y, y)[:, None] - 2.0 * y @ x64.T + xn[None, :]) / (2 * s * s)
            m = logits.max(axis=1)
            live_terms = float(np.mean(logits >= (m - log_cut)[:, None]))
            upper = -index.cell_lower_bounds(y) / (2 * s * s)
            live_rows = float(np.mean((upper >= (m - log_cut)[:, None]) @ sizes) / n)
            bound = 4.0 / (2.0 * live_rows + 2.0 * live_terms)
            print(f"| {d} | {lvl} | {live_terms:.3f} | {live_rows:.3f} | {bound:.2f} |", flush=True)


if __name__ == "__main__":
    main()
