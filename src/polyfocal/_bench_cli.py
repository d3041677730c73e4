"""The ``polyfocal bench`` argument parser, without torch: ``polyfocal bench --help`` and argument errors stay
fast.  The command itself (:func:`polyfocal.bench.run_from_args`) imports torch when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["MATRIX_LEVEL_NAMES", "VARIANT_NAMES", "main", "register"]

# --level of the matrix (polyfocal.bench.MATRIX_LEVELS: the -march of the native kernels, torch's capability)
MATRIX_LEVEL_NAMES = ("native", "avx512", "avx2", "sse4")

_DESCRIPTION = (
    "polyfocal bench: forward+backward time and peak extra memory of the loss family against torch baselines."
)
# the rows of polyfocal.bench.VARIANTS, in order (tests/test_bench.py checks they agree)
VARIANT_NAMES = (
    "torch-softmax",
    "torch-ce",
    "eager-poly1",
    "ce",
    "ce+weight+ignore+ls",
    "focal",
    "focal-g0.5",
    "poly1",
    "polyN",
    "poly1-focal-softmax",
    "logit-adjusted",
    "ldam",
    "ce+z-loss",
    "torch-bce",
    "tv-focal",
    "eager-poly1-focal",
    "sigmoid-focal",
    "sigmoid-focal-g1.5",
    "sigmoid-poly1-focal",
    "sigmoid-focal-index",
    "asymmetric",
    "varifocal",
    "quality-focal",
)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "linear", False):  # polyfocal bench --linear: its own module (polyfocal.bench_linear)
        from .bench_linear import run_from_args as run_linear

        return run_linear(args)
    from .bench import run_from_args

    return run_from_args(args)


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand (``polyfocal bench --help``)."""
    p = subparsers.add_parser(
        "bench",
        help="time forward+backward and peak memory of the losses against torch baselines",
        description=_DESCRIPTION,
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--variants", help=f"comma-separated subset of: {', '.join(VARIANT_NAMES)} (baselines added)")
    p.add_argument("--family", default="all", help="softmax, sigmoid or all (default)")
    p.add_argument("--softmax-shape", default="16384,1000", metavar="N,C", help="default 16384,1000")
    p.add_argument("--sigmoid-shape", default="100000,80", metavar="N,C", help="default 100000,80")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--peak-bandwidth", type=float, metavar="GB/s", help="peak HBM bandwidth for the %% column")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--matrix",
        action="store_true",
        help="the benchmark matrix: small classifiers, segmentation maps, bf16, detection shapes; CE / focal / "
        "Poly-1 rows, each as a ratio to torch's own loss; worst cell last",
    )
    p.add_argument("--matrix-threads", dest="threads_list", default="1,2", metavar="T,T", help="default 1,2")
    p.add_argument("--budget", type=float, default=1.0, metavar="S", help="matrix: seconds of rounds per cell")
    p.add_argument(
        "--level",
        choices=MATRIX_LEVEL_NAMES,
        help="matrix: the x86 vector level to run at (native kernels built with that -march, torch told the same "
        "through ATEN_CPU_CAPABILITY, in a child process): avx2 reproduces an AVX2 machine on an AVX-512 one; "
        "default: the machine's own (native)",
    )
    _register_linear(p)
    p.set_defaults(func=_run)


def _register_linear(p: Any) -> None:
    """``--linear``: the fused linear + loss rows (:mod:`polyfocal.bench_linear`); --device, --dtype, --threads,
    --repeats, --warmup, --no-memory and --json apply to it too."""
    p.add_argument(
        "--linear",
        action="store_true",
        help="fused linear + loss vs F.linear + F.cross_entropy and torch's chunked F.linear_cross_entropy "
        "(Liger / CCE on CUDA when installed)",
    )
    p.add_argument(
        "--linear-shapes",
        default="4096,1024,32000",
        metavar="N,d,V;...",
        help="--linear: semicolon-separated shapes (default 4096,1024,32000)",
    )
    p.add_argument("--linear-rows", metavar="ROW,...", help="--linear: a subset of the rows (baselines not added)")
    p.add_argument("--softcap", type=float, metavar="C", help="--linear: logit soft-capping (torch-chunked skipped)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m polyfocal._bench_cli``: the subcommand alone (works without the other subcommands' modules)."""
    from .cli import CLIError

    parser = argparse.ArgumentParser(prog="polyfocal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except CLIError as err:
        print(f"polyfocal bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
