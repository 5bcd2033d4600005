"""Gene-set libraries shipped with the package, and :func:`load` for names or GMT paths.

Bundled files (``sctopic/genesets/data``; origins and licences in the README):

``go_bp_human``
    GO biological process, human symbols (org.Hs.eg.db / GO.db 3.16, GO release
    2022-07-01; IEA/ND evidence dropped; propagated to ancestors; 5..500 genes; 7,853 sets).
``go_bp_mouse``
    The same sets projected to mouse symbols through 1:1 orthologs (not a native mouse
    annotation; 7,420 sets).
``hallmark``
    The 50 MSigDB hallmark sets (Liberzon et al. 2015), human symbols.
"""
from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

from sctopic.errors import InputError
from sctopic.genesets.library import GeneSetLibrary, read_gmt

#: bundled library name -> file under ``sctopic/genesets/data``
BUNDLED: dict[str, str] = {
    "go_bp_human": "go_bp_human_symbols.gmt.gz",
    "go_bp_mouse": "go_bp_mouse_symbols_orthology_projected.gmt.gz",
    "hallmark": "msigdb_hallmark_human.gmt.gz",
}
_ALIASES = {"hallmark_human": "hallmark", "msigdb_hallmark": "hallmark", "h": "hallmark"}


def available() -> list[str]:
    """Names accepted by :func:`load` for the bundled libraries."""
    return list(BUNDLED)


def bundled_path(name: str) -> Path:
    """Path of a bundled GMT file."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in BUNDLED:
        raise InputError(f"unknown bundled gene-set library {name!r}; choose from {available()}")
    return Path(str(resources.files("sctopic.genesets") / "data" / BUNDLED[key]))


@lru_cache(maxsize=8)
def _load_bundled(key: str) -> GeneSetLibrary:
    return read_gmt(bundled_path(key), name=key)


def load(name_or_path: str | os.PathLike | GeneSetLibrary) -> GeneSetLibrary:
    """Load a gene-set library.

    Parameters
    ----------
    name_or_path
        A bundled name (``"go_bp_human"``, ``"go_bp_mouse"``, ``"hallmark"``), a path to a
        GMT file (plain or ``.gz``), or a :class:`GeneSetLibrary` (returned as is).

    Returns
    -------
    GeneSetLibrary
        Bundled libraries are cached: treat the returned object as read-only.

    Raises
    ------
    InputError
        For an unknown name or a path that does not exist.
    """
    if isinstance(name_or_path, GeneSetLibrary):
        return name_or_path
    text = os.fspath(name_or_path)
    key = _ALIASES.get(text.lower(), text.lower())
    if key in BUNDLED and not Path(text).is_file():
        return _load_bundled(key)
    path = Path(text).expanduser()
    if path.is_file():
        return read_gmt(path)
    raise InputError(
        f"gene-set library {text!r} is neither a bundled name ({', '.join(available())}) "
        "nor an existing GMT file"
    )
