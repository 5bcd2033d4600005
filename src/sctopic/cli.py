"""Command-line interface: ``sctopic <command> ...`` (also ``python -m sctopic``).

Each command lives in its own module under :mod:`sctopic.commands`, exposing
``register(subparsers)`` which adds a sub-parser whose ``func(args) -> int`` runs it.
Modules are imported only when needed, so ``sctopic evaluate`` does not import torch.
"""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module
from typing import Sequence

from sctopic.errors import SctopicError

#: command name -> module holding ``register``; order is the order shown in ``--help``.
COMMANDS: dict[str, str] = {
    "demo": "sctopic.commands.demo",
    "fit": "sctopic.commands.fit",
    "transfer": "sctopic.commands.transfer",
    "evaluate": "sctopic.commands.evaluate",
    "enrich": "sctopic.commands.enrich",
    "embed": "sctopic.commands.embed",
    "bench": "sctopic.commands.bench",
    "perturb": "sctopic.commands.perturb",
    "survival": "sctopic.commands.survival",
    "select-k": "sctopic.commands.select_k",
    "report": "sctopic.commands.report",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sctopic",
        description="Interpretable single-cell embedded topic models (scE2TM, scETM).",
    )
    from sctopic import __version__

    parser.add_argument("--version", action="version", version=f"sctopic {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, modname in COMMANDS.items():
        # Import only the command asked for (fast start); all of them for --help.
        if wanted is not None and wanted in COMMANDS and wanted != name:
            sub.add_parser(name, help=argparse.SUPPRESS)
            continue
        try:
            mod = import_module(modname)
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != modname:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SctopicError as exc:
        print(f"sctopic {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"sctopic {args.command}: error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Disk full, read-only destination, I/O error outside the atomic writers (which raise
        # OutputError themselves): one line naming the path and the space left, never a traceback.
        from sctopic.data.io import describe_os_error

        print(f"sctopic {args.command}: error: {describe_os_error(exc, getattr(args, 'out', None))}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sctopic {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
