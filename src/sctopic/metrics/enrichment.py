"""Summaries of gene-set enrichment tables: the paper's N, U and Q."""
from __future__ import annotations

import pandas as pd

#: FDR threshold used by default; the reference notebook used 0.01.
DEFAULT_FDR = 0.05


def enrichment_summary(
    table: pd.DataFrame,
    fdr: float = DEFAULT_FDR,
    *,
    positive_only: bool | None = None,
    fdr_column: str | None = None,
) -> dict:
    """N, U and Q of an ORA or GSEA result table.

    P_O is the set of significant (topic, gene set) pairs, FDR < ``fdr``.
    N = number of distinct gene sets in P_O (how much biology the topics cover),
    U = N / |P_O| (1 when no set is found by two topics; 0 when P_O is empty),
    Q = N * U.

    Parameters
    ----------
    table
        Output of :func:`sctopic.genesets.ora` or :func:`sctopic.genesets.gsea`, with
        columns ``topic``, ``set``, ``fdr`` and, for GSEA, ``statistic`` (NES).
    fdr
        Significance threshold (strict ``<``).  Default 0.05; the scE2TM reference
        notebook used 0.01 (``<=``), so pass 0.01 to approach its numbers.
    positive_only
        Keep only pairs with ``statistic > 0``.  Default: on for GSEA tables (a column
        ``method`` equal to ``"gsea"``, or an ``es`` column), because a topic's
        gene program is its top-weighted genes, so only positive enrichment (sets at the top
        of the topic's ranking) describes it; off for ORA (always over-representation).

    fdr_column
        Which FDR column to threshold. Default: ``fdr_nes`` for GSEA tables that have it
        (GSEA's own NES-based FDR, which is what gseapy reports as "FDR q-val" and what the
        reference notebook thresholded), ``fdr`` otherwise. BH on permutation p-values cannot
        go below about ``n_sets / permutations``: with 1,000 permutations and ~3,800 GO sets no
        pair reaches 0.01.

    Returns
    -------
    dict
        ``n``, ``u``, ``q``, ``pairs`` (= |P_O|) and ``fdr_column``.
    """
    missing = {"topic", "set", "fdr"} - set(table.columns)
    if missing:
        raise ValueError(f"enrichment table lacks columns {sorted(missing)}")
    if positive_only is None:
        is_gsea = "es" in table.columns
        if "method" in table.columns and len(table):
            is_gsea = is_gsea or table["method"].astype(str).str.lower().eq("gsea").all()
        positive_only = bool(is_gsea)
    if fdr_column is None:
        fdr_column = "fdr_nes" if positive_only and "fdr_nes" in table.columns else "fdr"
    sig = table[fdr_column].astype(float) < fdr
    if positive_only:
        if "statistic" not in table.columns:
            raise ValueError("positive_only needs a 'statistic' column (NES)")
        sig &= table["statistic"].astype(float) > 0
    hits = table.loc[sig, ["topic", "set"]].drop_duplicates()
    pairs = int(len(hits))
    n = int(hits["set"].nunique())
    u = n / pairs if pairs else 0.0
    return {"n": n, "u": float(u), "q": float(n * u), "pairs": pairs, "fdr_column": fdr_column}
