"""The ``polyfocal`` command line: ``polyfocal bench``, ``polyfocal compare``, ``polyfocal sweep``, ``polyfocal plot``.

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parsers and
sets ``func`` (``args -> int`` exit code) as a parser default.  Those modules import their optional
dependencies (matplotlib, torchmetrics, tqdm, ...) only inside ``func``, so ``polyfocal --help`` and the
library itself never need the extras.

Bad input raises :class:`CLIError`; :func:`main` prints it as one ``polyfocal <command>: error: ...`` line
on stderr and returns exit code 2, as argparse does for its own usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["CLIError", "build_parser", "main"]

# Modules that register subcommands, in --help order.
_SUBCOMMAND_MODULES = ("polyfocal.bench", "polyfocal.experiments.cli")


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, nothing half-written."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="polyfocal",
        description="Benchmarks and experiments for the polyfocal loss family.",
    )
    parser.add_argument("--version", action="version", version=f"polyfocal {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"polyfocal {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"polyfocal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
