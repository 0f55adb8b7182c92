"""Command line: ``nnscore info`` and ``nnscore demo``.  Results go to stdout, errors exit non-zero
with one line; a demo whose criteria fail exits with status 2."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _cmd_info(args) -> int:
    from ._info import format_info, info_dict

    info = info_dict()
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _print_table(columns, rows, file) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)


def _cmd_demo(args) -> int:
    from pathlib import Path

    from . import demos

    if args.list:
        for name, fn in demos.DEMOS.items():
            summary = (fn.__doc__ or "").strip().splitlines()[0]
            print(f"{name:12s} {summary}")
        return 0
    name = args.name or demos.DEFAULT_DEMO
    if name not in demos.DEMOS:
        raise ValueError(f"unknown demo {name!r}; `nnscore demo --list` shows the available ones")
    out = Path(args.out) if args.out else Path(f"nnscore-demo-{name}.png")
    if args.out and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    params = _demo_params(name, args.demo_params)
    result = demos.run_demo(name, seed=args.seed, progress=None if args.progress else False, **params)
    log = sys.stderr if args.json else sys.stdout
    if result.panels:
        from ._png import write_scatter_png

        write_scatter_png(out, result.panels)
    if args.json:
        payload = result.to_dict()
        payload["figure"] = str(out) if result.panels else None
        print(json.dumps(payload, indent=2, default=float))
    else:
        print(f"nnscore demo {name}: {result.description}\n", file=log)
        _print_table(result.columns, result.rows, log)
        print("", file=log)
        for c in result.criteria:
            print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {_fmt(c.value)}", file=log)
        if result.panels:
            print(f"\nfigure: {out} ({', '.join(result.panel_titles)})", file=log)
        print(f"\n{'all criteria passed' if result.passed else 'some criteria FAILED'}", file=log)
    return 0 if result.passed else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnscore", description="Exact and smoothed empirical diffusion scores.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="version, compiled backends, SIMD level, threads, dependencies",
                            allow_abbrev=False)
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_info.set_defaults(func=_cmd_info)
    p_demo = sub.add_parser("demo", help="run a phenomenon of the science (default: smoothing on a circle)",
                            allow_abbrev=False)
    p_demo.add_argument("name", nargs="?", help="demo name (see --list)")
    p_demo.add_argument("--list", action="store_true", help="list the demos")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument("--out", help="PNG path (default: nnscore-demo-<name>.png in the current folder)")
    p_demo.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p_demo.add_argument("--json", action="store_true", help="print the results as JSON")
    p_demo.add_argument("--progress", action="store_true", help="show progress bars")
    p_demo.epilog = ("Any other --key value pair sets a parameter of the demo (e.g. nnscore demo smoothing --h 0.2 "
                     "--N 12); --N, --M, --d, --n are science.md's names for n_train, n_draws, dim, n_sub.")
    p_demo.set_defaults(func=_cmd_demo)
    return parser


#: science.md's demo flags that name a parameter differently (e.g. ``--N 12``, ``--M 2``).
DEMO_FLAG_ALIASES = {"N": "n_train", "M": "n_draws", "d": "dim", "n": "n_sub"}


def _demo_params(name: str, extra: list) -> dict:
    """``--key value`` pairs after ``nnscore demo NAME`` as keyword arguments of that demo.

    Values are Python literals (``0.2``, ``12``, ``(0.1,0.2)``) or plain strings; unknown
    parameters are an error listing the ones the demo has.
    """
    import ast
    import inspect

    from . import demos

    params = inspect.signature(demos.DEMOS[name]).parameters
    allowed = [p for p in params if p not in ("seed", "progress")]
    out: dict = {}
    i = 0
    while i < len(extra):
        flag = extra[i]
        if not flag.startswith("--"):
            raise ValueError(f"unexpected argument {flag!r}")
        key, _, value = flag[2:].partition("=")
        if not value:
            if i + 1 >= len(extra):
                raise ValueError(f"{flag} needs a value")
            value = extra[i + 1]
            i += 1
        key = DEMO_FLAG_ALIASES.get(key, key).replace("-", "_")
        if key not in allowed:
            raise ValueError(f"demo {name!r} has no parameter {key!r}; its parameters: {', '.join(allowed)}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
        i += 1
    return out


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.demo_params = extra
    try:
        return args.func(args)
    except Exception as exc:  # one line, non-zero exit
        print(f"nnscore {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
