"""Reading and writing gene-set files in GMT format (plain text or gzip), as records.

A GMT line is ``name <TAB> description <TAB> gene <TAB> gene ...``. Files ending in
``.gz`` are (de)compressed transparently. This module deals in ``(name, description, genes)``
records only; :func:`sctopic.genesets.library.read_gmt` builds a
:class:`~sctopic.genesets.library.GeneSetLibrary` from them.
"""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

from sctopic.errors import InputError

if TYPE_CHECKING:
    from sctopic.genesets.library import GeneSetLibrary

PathLike = str | os.PathLike


def _open_text(path: Path, mode: str, gz: bool | None = None):
    if (path.suffix == ".gz") if gz is None else gz:
        if "w" in mode:
            # mtime=0 keeps the compressed bytes reproducible from run to run.
            raw = open(path, "wb")
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
            return _ClosingWrapper(io.TextIOWrapper(gz, encoding="utf-8", newline="\n"), raw)
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, mode, encoding="utf-8", newline="\n" if "w" in mode else None)


class _ClosingWrapper:
    """Text stream that also closes the underlying raw file (GzipFile does not)."""

    def __init__(self, text: io.TextIOWrapper, raw) -> None:
        self._text, self._raw = text, raw

    def __enter__(self):
        return self._text

    def __exit__(self, *exc) -> None:
        self._text.close()
        self._raw.close()


def iter_gmt(path: PathLike) -> Iterator[tuple[str, str, list[str]]]:
    """Yield ``(name, description, genes)`` for each set of a GMT file.

    Blank lines and lines starting with ``#`` are skipped; gene fields are stripped,
    empty ones dropped and duplicates within a set removed (first occurrence kept).

    Raises
    ------
    InputError
        If a line has no tab (not GMT), no set name, or the same set name occurs twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"gene-set file {str(path)!r} does not exist")
    seen: set[str] = set()
    try:
        with _open_text(path, "r") as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith("#"):
                    continue
                fields = line.split("\t")
                if len(fields) < 2:  # a text file that is not GMT, not an empty gene set
                    raise InputError(f"{path}: line {lineno} has no tab ({line.strip()[:40]!r}); not a GMT "
                                     "file: each line must be NAME<TAB>DESCRIPTION<TAB>GENE1<TAB>GENE2...")
                name = fields[0].strip()
                if not name:
                    raise InputError(f"{path}: line {lineno} has no gene-set name")
                if name in seen:
                    raise InputError(f"{path}: gene set {name!r} occurs twice (line {lineno})")
                seen.add(name)
                desc = fields[1].strip() if len(fields) > 1 else ""
                genes = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
                yield name, desc, genes
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise InputError(f"{path} is not a readable GMT text file ({exc})") from exc


def write_gmt(
    library: GeneSetLibrary | Mapping[str, Sequence[str]],
    path: PathLike,
    descriptions: Mapping[str, str] | None = None,
) -> Path:
    """Write gene sets to a GMT file (gzip-compressed if ``path`` ends in ``.gz``).

    Parameters
    ----------
    library
        A :class:`~sctopic.genesets.library.GeneSetLibrary` (anything with a ``records()``
        method) or a mapping ``set name -> genes``.
    path
        Output file.
    descriptions
        For a mapping: optional ``set name -> description`` (``na`` where missing).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    if hasattr(library, "records"):
        records: Iterable[tuple[str, str, Sequence[str]]] = library.records()
    else:
        descriptions = descriptions or {}
        records = ((k, descriptions.get(k, "na"), v) for k, v in library.items())
    lines = []
    for name, desc, genes in records:
        for field in (name, desc, *genes):
            if "\t" in field or "\n" in field:
                raise InputError(f"gene set {name!r}: field {field!r} contains a tab or newline")
        lines.append("\t".join([name, desc or "na", *genes]) + "\n")

    def write(tmp: str) -> None:
        # the temporary file keeps the final name's suffix, so .gz compresses
        with _open_text(Path(tmp), "w", gz=path.suffix == ".gz") as fh:
            fh.writelines(lines)

    from sctopic.data.io import atomic_write

    # a full disk or a kill never leaves a truncated GMT under the final name
    return atomic_write(path, write)
