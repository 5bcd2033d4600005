"""Helpers shared by the foundation-model and knowledge adapters (:mod:`~sctopic.external.scgpt`,
:mod:`~sctopic.external.geneformer`, :mod:`~sctopic.external.go`): reading the expression and
the gene identifiers out of an AnnData, checking gene coverage, reading model files safely, and
a progress bar. The view resolver (:mod:`sctopic.external.views`) does not use them.
"""
from __future__ import annotations

import io
import json
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp

from sctopic.data.counts import layer_matrix
from sctopic.errors import InputError

log = logging.getLogger(__name__)


def expression_matrix(adata: ad.AnnData, layer: str | None) -> tuple[sp.csr_matrix, str]:
    """``adata.X`` or a layer as a float32 CSR matrix, and its name for messages (no value checks)."""
    X, where = layer_matrix(adata, layer)
    if not np.issubdtype(np.asarray(X.data if sp.issparse(X) else X).dtype, np.number):
        raise InputError(f"{where} is not numeric.")
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sort_indices()
    return X, where


def gene_names(adata: ad.AnnData, key: str | None) -> list[str]:
    """Gene identifiers from ``var_names`` (``key=None``) or from a ``var`` column."""
    if key is None:
        return [str(g) for g in adata.var_names]
    if key not in adata.var.columns:
        cols = ", ".join(map(repr, adata.var.columns)) or "none"
        raise InputError(f"gene column {key!r} not found in adata.var (columns: {cols}).")
    return [str(g) for g in adata.var[key].astype(str)]


def coverage_check(
    genes: Sequence[str],
    found: np.ndarray,
    what: str,
    min_coverage: float,
    expected_kind: str,
    warn_below: float = 0.5,
    hint: str = "",
) -> float:
    """Fraction of ``genes`` found; raise below ``min_coverage``, warn below ``warn_below``."""
    from sctopic.genesets import gene_id_kind  # on first use: sctopic.genesets loads scipy.stats

    n = len(genes)
    k = int(np.count_nonzero(found))
    cov = k / max(n, 1)
    msg = f"{k:,} of {n:,} genes ({cov:.1%}) found in {what}"
    if k == 0 or cov < min_coverage:
        kind = gene_id_kind(list(genes))
        ex = ", ".join(list(genes)[:3])
        raise InputError(
            f"only {msg}: the data's genes look like {kind} IDs (e.g. {ex}) and {what} uses "
            f"{expected_kind}. Map the genes first{hint}."
        )
    if cov < warn_below:
        warnings.warn(f"only {msg}; the embedding uses those genes only.", UserWarning, stacklevel=3)
    log.info(msg)
    return cov


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, with errors that name the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"could not read {what} {path} as JSON: {exc}") from exc


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, strings, numbers and numpy scalars.

    Any other global (a class or a function: how a pickle runs code) is refused.
    """

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_dict_file(path: Path, what: str) -> dict:
    """Read a ``dict`` from JSON, or from a pickle that holds plain data only (never code).

    Geneformer ships its dictionaries as pickles; they are read with an unpickler that accepts
    only dicts, lists, strings, numbers and numpy scalars, so a crafted file cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    if path.suffix == ".json":
        obj = read_json(path, what)
    else:
        try:
            obj = _DataOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
        except pickle.UnpicklingError as exc:
            raise InputError(
                f"{what} {path} is not a plain-data pickle ({exc}); refusing to load it "
                "because it could run code. Convert it to JSON."
            ) from exc
        except Exception as exc:  # truncated or foreign file
            raise InputError(f"could not read {what} {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} holds a {type(obj).__name__}, not a dictionary.")
    return obj


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar counting cells (disabled when ``enabled`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="cell", disable=not enabled, leave=False)
