"""The ``polyfocal`` command line: ``polyfocal bench``, ``polyfocal compare``, ``polyfocal sweep``, ``polyfocal plot``.

Each subcommand lives in its own module, which exposes ``register(subparsers)``: it adds its parsers and
sets ``func`` (``args -> int`` exit code) as a parser default.  Those modules import their optional
dependencies (matplotlib, torchmetrics, tqdm, ...) only inside ``func``, so ``polyfocal --help`` and the
library itself never need the extras.

``polyfocal bench``'s parser lives in the torch-free :mod:`polyfocal._bench_cli`, which imports
:mod:`polyfocal.bench` (and torch) only when the command runs; a module whose import is heavy can still be
listed as ``(command, module, summary)`` and is then imported only when its subcommand is named.  Help and
argument errors therefore never import torch (well under a second instead of several).

Bad input raises :class:`CLIError`; :func:`main` prints it as one ``polyfocal <command>: error: ...`` line
on stderr and returns exit code 2, as argparse does for its own usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["CLIError", "build_parser", "main"]

# Modules that register subcommands, in --help order: (subcommand it registers, module, --help summary).
# A module whose import is heavy is imported only when its subcommand is the one being run.
_SUBCOMMAND_MODULES = (
    (None, "polyfocal._bench_cli", None),
    (None, "polyfocal.experiments.cli", None),
)


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, nothing half-written."""


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first token that is not an option (``None`` if there is none)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``argv`` (default: every subcommand) says which lazily imported subcommand is needed."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="polyfocal",
        description="Benchmarks and experiments for the polyfocal loss family.",
    )
    parser.add_argument("--version", action="version", version=f"polyfocal {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if argv is None else _command(argv)
    for command, module, summary in _SUBCOMMAND_MODULES:
        if command is None or argv is None or wanted == command:
            importlib.import_module(module).register(subparsers)
        else:  # listed in --help; never selected, since then the real module is registered instead
            subparsers.add_parser(command, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
