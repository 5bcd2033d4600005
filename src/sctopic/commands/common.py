"""Pieces shared by the CLI commands."""
from __future__ import annotations

import json
from pathlib import Path

from sctopic.data.io import write_text_atomic


def _int_at_least(value: str, low: int) -> int:
    import argparse

    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected a number >= {low}, got {v}")
    return v


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(value, 1)


def nonneg_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(value, 0)


def write_json(data: dict, path: str | Path) -> Path:
    """Write JSON atomically (temporary file, then rename); numpy scalars and NaN are made JSON-safe."""
    from sctopic.data.io import jsonable

    return write_text_atomic(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n", path)


def add_overwrite_arg(p) -> None:
    """The ``--overwrite`` flag of the commands that write an output directory."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run of this command in --out (default: refuse a non-empty "
                        "--out). The new run is written beside it and swapped in only when complete")


def verify_run_input(path: str | Path) -> None:
    """Refuse a run directory (or a file in one) whose files do not match its manifest.

    Directories written by older versions (no ``manifest.json``) pass unchecked.
    """
    from sctopic.data.rundir import verify_input

    verify_input(path)


def add_command(sub, name: str, run, *, help: str, description: str | None = None, **kwargs):
    """Add the sub-command ``name`` to ``sub`` (argparse sub-parsers); ``run(args) -> int`` runs it.

    ``description`` is free text (argparse re-flows it); ``kwargs`` go to ``add_parser``.
    Returns the sub-command's parser, for its arguments.
    """
    p = sub.add_parser(name, help=help, description=description, **kwargs)
    p.set_defaults(func=run)
    return p
