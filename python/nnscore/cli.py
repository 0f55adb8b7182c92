"""Command line: ``nnscore info``.  Results go to stdout, errors exit non-zero with one line."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnscore", description="Exact and smoothed empirical diffusion scores.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="version, compiled backends, SIMD level, threads, dependencies")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_info.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # one line, non-zero exit
        print(f"nnscore {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
