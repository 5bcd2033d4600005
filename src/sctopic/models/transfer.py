"""Zero-shot transfer: embed new data with a trained model, genes aligned by name or ortholog."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from sctopic.data.io import read_adata
from sctopic.errors import InputError
from sctopic.models.base import BaseTopicModel, read_model_file

#: model class name -> module holding it
MODEL_CLASSES = {"SCE2TM": "sctopic.models.sce2tm", "SCETM": "sctopic.models.scetm"}


def load_model(path: str | os.PathLike, adata=None, device: str = "cpu") -> BaseTopicModel:
    """Load any sctopic model file (or a ``sctopic fit`` output directory), whatever its class."""
    from importlib import import_module

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise InputError(f"no model file at {path}; pass the model.pt written by 'sctopic fit' or its directory.")
    meta, _ = read_model_file(path)
    if meta.get("class") not in MODEL_CLASSES:
        raise InputError(f"{path} is not an sctopic model file (class {meta.get('class')!r}).")
    cls = getattr(import_module(MODEL_CLASSES[meta["class"]]), meta["class"])
    return cls.load(path, adata=adata, device=device)


def _read_ortholog_file(path: Path) -> pd.DataFrame:
    """A two-column ortholog table from CSV/TSV/whitespace text, or a one-line InputError saying
    what is wrong with the file (missing, binary, one column, ragged rows)."""
    import io

    fix = "give a text file with two columns (CSV or TSV), one gene symbol per species per row"
    if not path.is_file():
        raise InputError(f"ortholog table {path} does not exist.")
    raw = path.read_bytes()
    try:
        if b"\x00" in raw[:65536]:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "NUL byte")
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"ortholog table {path} is not a text file (binary or not UTF-8); {fix}.") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"ortholog table {path} is empty; {fix}.")
    first = lines[0]
    sep = next((c for c in ("\t", ",", ";") if c in first), None)
    if sep is None:
        if len(first.split()) < 2:
            raise InputError(f"ortholog table {path} has one column (first row {first.strip()[:40]!r}); {fix}.")
        sep = r"\s+"
    try:
        df = pd.read_csv(io.StringIO("\n".join(lines)), sep=sep, engine="python", header=None, dtype=str,
                         skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as exc:
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"ortholog table {path} is malformed ({why}); {fix}.") from None
    return df


def read_orthologs(table, model_genes, data_genes) -> tuple[dict[str, str], dict]:
    """One-to-one ortholog map data gene -> model gene from a two-column table.

    Parameters
    ----------
    table
        Path to a two-column CSV/TSV (a header row is optional), or a DataFrame whose first two
        columns are the two species' symbols, e.g. human and mouse.
    model_genes, data_genes
        Gene names of the model and of the new data. The column sharing more names with the
        model's genes is taken as the model's side.

    Returns
    -------
    mapping, report
        ``{data_gene: model_gene}`` restricted to one-to-one pairs, and counts for the report.
        Many-to-many pairs are dropped: a gene with several orthologs has no single partner.
    """
    if isinstance(table, pd.DataFrame):
        df = table
    else:
        df = _read_ortholog_file(Path(table))
    if df.shape[1] < 2:
        raise InputError(f"the ortholog table has {df.shape[1]} column(s); it needs two (one gene symbol per "
                         "species per row, e.g. human<TAB>mouse).")
    df = df.iloc[:, :2].dropna().astype(str)
    df.columns = ["a", "b"]
    mg, dg = set(map(str, model_genes)), set(map(str, data_genes))
    hits = {c: int(df[c].isin(mg).sum()) for c in ("a", "b")}
    mcol = "a" if hits["a"] >= hits["b"] else "b"
    dcol = "b" if mcol == "a" else "a"
    if hits[mcol] == 0:
        raise InputError("no gene of the ortholog table matches the model's genes; check the table's species and symbols.")
    df = df.drop_duplicates()
    one_to_one = df[~df[mcol].duplicated(keep=False) & ~df[dcol].duplicated(keep=False)]
    one_to_one = one_to_one[one_to_one[dcol].isin(dg) & one_to_one[mcol].isin(mg)]
    mapping = dict(zip(one_to_one[dcol], one_to_one[mcol]))
    report = {"ortholog_rows": int(len(df)), "ortholog_one_to_one_used": len(mapping),
              "ortholog_rows_dropped_not_one_to_one": int(len(df) - (~df[mcol].duplicated(keep=False) & ~df[dcol].duplicated(keep=False)).sum())}
    return mapping, report


def transfer(
    model: BaseTopicModel | str | os.PathLike,
    adata: ad.AnnData | str | os.PathLike,
    layer: str | None = None,
    orthologs=None,
    key_added: str | None = None,
    min_shared: float = 0.1,
) -> tuple[ad.AnnData, dict]:
    """Embed new cells with a trained model (zero-shot) and write its outputs into them.

    Genes are aligned by name; model genes absent from the data are filled with zeros (with a
    warning stating the fraction). With ``orthologs``, the data's genes are first renamed to
    the model's species through one-to-one orthologs.

    Parameters
    ----------
    model
        A trained model, or a model file / ``sctopic fit`` output directory.
    adata
        New data with raw counts (AnnData or ``.h5ad`` path). It is not modified: outputs go
        to a copy.
    layer
        Layer of ``adata`` with raw counts (default ``X``).
    orthologs
        Optional two-column ortholog table (path or DataFrame) for cross-species transfer.
    key_added
        Output key (default the model's name, e.g. ``"scetm"``).
    min_shared
        Refuse to transfer when fewer than this fraction of the model's genes are present.

    Returns
    -------
    adata, report
        A copy of the data with ``obsm['X_<key>']`` etc. (see ``write_results``), and a dict
        with the gene overlap (``n_model_genes``, ``n_shared_genes``, ``fraction_shared``).
    """
    if not (isinstance(min_shared, (int, float)) and 0 <= min_shared <= 1):
        raise InputError(f"min_shared (--min-shared) is a fraction of the model's genes, between 0 and 1; got "
                         f"{min_shared!r}.")
    if not isinstance(model, BaseTopicModel):
        model = load_model(model)
    model._check_trained()
    data = read_adata(adata)
    if getattr(data, "isbacked", False):
        data = data.to_memory()
    data = data.copy()
    report: dict = {}
    names = pd.Index(data.var_names.astype(str))
    if orthologs is not None:
        mapping, report = read_orthologs(orthologs, model.genes, names)
        new = np.array([mapping.get(g, g) for g in names], dtype=object)
        # A data gene whose own name equals a mapped model gene would now collide: drop it.
        keep = ~(pd.Index(new).duplicated(keep=False) & ~names.isin(list(mapping)))
        data = data[:, keep].copy()
        data.var_names = pd.Index(new[keep])
        names = pd.Index(data.var_names.astype(str))
    if not names.is_unique:
        raise InputError("the new data have duplicate gene names; run adata.var_names_make_unique().")
    shared = int(names.isin(model.genes).sum())
    frac = shared / len(model.genes)
    report.update(n_model_genes=len(model.genes), n_shared_genes=shared, fraction_shared=frac,
                  n_cells=int(data.n_obs))
    if frac < min_shared:
        raise InputError(
            f"only {shared} of the model's {len(model.genes)} genes ({frac:.1%}) are in the new data; "
            "check that both use the same gene identifiers (symbols vs Ensembl IDs) and species "
            "(pass an ortholog table for cross-species transfer)."
        )
    with warnings.catch_warnings():
        # The missing-gene warning is re-issued below, once, with the caller's stack level.
        warnings.filterwarnings("ignore", message=".*missing from the data and are filled with zeros")
        model.write_results(data, key_added=key_added, layer=layer, allow_missing_genes=True)
    if shared < len(model.genes):
        warnings.warn(
            f"{len(model.genes) - shared} of the model's {len(model.genes)} genes "
            f"({1 - frac:.1%}) are missing from the new data and were filled with zeros.",
            UserWarning, stacklevel=2,
        )
    return data, report
