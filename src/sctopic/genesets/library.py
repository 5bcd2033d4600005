"""Gene-set libraries as sparse set-by-gene incidence matrices, and their matching to a dataset.

:class:`GeneSetLibrary` holds a whole collection over its own gene universe;
:meth:`GeneSetLibrary.match` projects it onto a dataset's gene list, giving a
:class:`MatchedLibrary` whose incidence columns are the dataset's genes in dataset order,
plus a :class:`MatchReport` saying how well the two fit. :func:`read_gmt` reads a library from
a GMT file; :func:`gene_id_kind` tells symbols from Ensembl and Entrez IDs.
"""
from __future__ import annotations

import copy

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from sctopic.errors import InputError
from sctopic.genesets.gmt import PathLike, iter_gmt, write_gmt

_ENSEMBL = re.compile(r"^ENS[A-Z]*[GTP]\d{6,}(\.\d+)?$", re.IGNORECASE)
_NUMERIC = re.compile(r"^\d+$")


def gene_id_kind(names: Sequence[str]) -> str:
    """Guess the identifier type of a gene list: 'ensembl', 'entrez' or 'symbol'."""
    sample = [str(g) for g in names[:2000]]
    if not sample:
        return "symbol"
    if np.mean([bool(_ENSEMBL.match(g)) for g in sample]) > 0.5:
        return "ensembl"
    if np.mean([bool(_NUMERIC.match(g)) for g in sample]) > 0.5:
        return "entrez"
    return "symbol"


class GeneSetLibrary:
    """A collection of named gene sets.

    Parameters
    ----------
    names
        Set names (unique).
    descriptions
        One description per set (``"na"`` where none).
    genes
        The library's gene universe (unique identifiers).
    incidence
        ``(n_sets, n_genes)`` sparse matrix, non-zero where a gene belongs to a set.
    name
        Library name used in reports and output tables.
    """

    def __init__(
        self,
        names: Sequence[str],
        descriptions: Sequence[str],
        genes: Sequence[str],
        incidence: sp.spmatrix,
        name: str = "library",
    ) -> None:
        names = [str(n) for n in names]
        genes_arr = np.asarray([str(g) for g in genes], dtype=object)
        inc = sp.csr_matrix(incidence, dtype=np.int8)
        inc.data[:] = 1
        inc.sum_duplicates()
        inc.data[:] = 1
        if inc.shape != (len(names), len(genes_arr)):
            raise InputError(
                f"incidence shape {inc.shape} does not match {len(names)} sets x {len(genes_arr)} genes"
            )
        if len(descriptions) != len(names):
            raise InputError("need one description per gene set")
        if len(set(names)) != len(names):
            raise InputError("gene-set names must be unique")
        if len(set(genes_arr.tolist())) != len(genes_arr):
            raise InputError("library gene identifiers must be unique")
        self.name = name
        #: default of :meth:`match`'s ``case_insensitive`` (see :meth:`matching_case`)
        self.case_insensitive: bool | None = None
        self.names: list[str] = names
        self.descriptions: list[str] = [str(d) for d in descriptions]
        self.genes: np.ndarray = genes_arr
        self.incidence: sp.csr_matrix = inc
        self._index = {g: i for i, g in enumerate(genes_arr.tolist())}
        self._names = frozenset(names)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_records(
        cls, records: Iterable[tuple[str, str, Sequence[str]]], name: str = "library"
    ) -> "GeneSetLibrary":
        """Build from ``(set name, description, genes)`` triples."""
        index: dict[str, int] = {}
        names, descs, cols, indptr = [], [], [], [0]
        for set_name, desc, genes in records:
            names.append(set_name)
            descs.append(desc if desc else "na")
            # setdefault assigns new genes the next column in order of first appearance.
            cols.extend(index.setdefault(g, len(index)) for g in dict.fromkeys(genes))
            indptr.append(len(cols))
        inc = sp.csr_matrix(
            (np.ones(len(cols), dtype=np.int8), np.asarray(cols, dtype=np.int64), np.asarray(indptr)),
            shape=(len(names), len(index)),
        )
        return cls(names, descs, list(index), inc, name=name)

    @classmethod
    def from_dict(
        cls,
        sets: Mapping[str, Sequence[str]],
        descriptions: Mapping[str, str] | None = None,
        name: str = "library",
    ) -> "GeneSetLibrary":
        """Build from a mapping ``set name -> genes`` (and optional descriptions)."""
        descriptions = descriptions or {}
        return cls.from_records(((k, descriptions.get(k, "na"), v) for k, v in sets.items()), name=name)

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (
            f"GeneSetLibrary({self.name!r}: {len(self.names)} sets over {len(self.genes)} genes, "
            f"{self.incidence.nnz} memberships)"
        )

    def __contains__(self, set_name: object) -> bool:
        return set_name in self._names

    @property
    def sizes(self) -> np.ndarray:
        """Number of genes in each set."""
        return np.diff(self.incidence.indptr)

    def members(self, i: int | str) -> list[str]:
        """Genes of set ``i`` (index or name), in file order."""
        if isinstance(i, str):
            i = self.names.index(i)
        inc = self.incidence
        return self.genes[inc.indices[inc.indptr[i] : inc.indptr[i + 1]]].tolist()

    def records(self) -> Iterator[tuple[str, str, list[str]]]:
        """Iterate ``(name, description, genes)``."""
        for i, (n, d) in enumerate(zip(self.names, self.descriptions)):
            yield n, d, self.members(i)

    def to_dict(self) -> dict[str, list[str]]:
        """``set name -> genes``."""
        return {n: g for n, _, g in self.records()}

    def to_gmt(self, path) -> None:
        """Write the library as GMT (gzip if ``path`` ends in ``.gz``)."""
        write_gmt(self, path)

    # ----------------------------------------------------------------- matching
    def matching_case(self, case_insensitive: bool | None) -> "GeneSetLibrary":
        """A copy of this library (sharing its arrays) whose :meth:`match` defaults to
        ``case_insensitive``: ``True`` for data whose symbols are of the library's species but
        differently cased (mouse genes stored in upper case, e.g. Baron's ``INS1`` for *Ins1*),
        which the default refuses as another species' library."""
        out = copy.copy(self)
        out.case_insensitive = case_insensitive
        return out

    def match(
        self,
        genes: Sequence[str],
        min_size: int = 5,
        max_size: int = 500,
        case_insensitive: bool | None = None,
        min_coverage: float = 0.05,
    ) -> "MatchedLibrary":
        """Project the library onto a dataset's genes.

        Genes are matched by exact identifier first; with ``case_insensitive`` the
        remaining dataset genes are matched ignoring case where that is unambiguous
        (exactly one library gene and exactly one unmatched dataset gene share the
        upper-cased name). A set is kept when ``min_size <= overlap <= max_size``,
        where overlap is the number of its genes present in the dataset.

        Parameters
        ----------
        genes
            The dataset's gene names (unique), in dataset order.
        min_size, max_size
            Bounds on the overlap size of kept sets (5..500 as in the reference).
        case_insensitive
            Also match genes differing only in case (e.g. ``Cd74`` and ``CD74``). ``None``
            (default): do so for a minority of the genes, but refuse a library that matches
            the dataset mostly after upper-casing (mouse sets on human data, or the reverse:
            another species' library); ``True``: match by case anyway; ``False``: exact only.
        min_coverage
            When both the fraction of dataset genes found in the library and the fraction
            of library genes found in the dataset are below this, an
            :class:`~sctopic.errors.InputError` explains the likely cause (e.g. Ensembl IDs
            against symbols).

        Returns
        -------
        MatchedLibrary

        Raises
        ------
        InputError
            If gene names are not unique, almost nothing matches (e.g. Ensembl IDs against
            symbols) or no set passes the size filter.
        """
        genes = [str(g) for g in genes]
        n_genes = len(genes)
        if n_genes == 0:
            raise InputError("the dataset has no genes")
        if len(set(genes)) != n_genes:
            dup = next(g for g in genes if genes.count(g) > 1)
            raise InputError(
                f"dataset gene names must be unique ({dup!r} occurs twice); "
                "use adata.var_names_make_unique()"
            )
        if min_size < 1 or max_size < min_size:
            raise InputError(f"need 1 <= min_size <= max_size (got {min_size}, {max_size})")

        lib_col = np.full(n_genes, -1, dtype=np.int64)
        for j, g in enumerate(genes):
            lib_col[j] = self._index.get(g, -1)
        n_exact = int((lib_col >= 0).sum())
        n_ci = 0
        if case_insensitive is None:
            case_insensitive = getattr(self, "case_insensitive", None)
        if case_insensitive is not False and n_exact < n_genes:
            lib_upper: dict[str, list[int]] = {}
            for i, g in enumerate(self.genes.tolist()):
                lib_upper.setdefault(g.upper(), []).append(i)
            used = set(lib_col[lib_col >= 0].tolist())
            data_upper: dict[str, list[int]] = {}
            for j in np.flatnonzero(lib_col < 0):
                data_upper.setdefault(genes[j].upper(), []).append(int(j))
            for key, js in data_upper.items():
                cand = lib_upper.get(key)
                if cand is None or len(cand) != 1 or len(js) != 1 or cand[0] in used:
                    continue  # absent or ambiguous: leave unmatched
                lib_col[js[0]] = cand[0]
                n_ci += 1

        if case_insensitive is None and n_ci > n_exact:
            eg = next(genes[j] for j in range(n_genes) if lib_col[j] >= 0 and genes[j] != self.genes[lib_col[j]])
            raise InputError(
                f"gene-set library {self.name!r} matches the dataset mostly after upper-casing ({n_ci} genes, "
                f"e.g. {eg} ~ {self.genes[lib_col[genes.index(eg)]]}; {n_exact} match exactly): it looks like "
                "another species' library (mouse sets on human data, or the reverse). Use the library of "
                "the data's species (go_bp_human, go_bp_mouse) or map the genes through orthologs; in "
                "Python, case_insensitive=True matches them anyway."
            )
        found = lib_col >= 0
        n_found = int(found.sum())
        coverage = n_found / n_genes
        # "Almost nothing matches" = few dataset genes are in the library AND few library
        # genes are in the dataset (a small custom GMT can cover a tiny part of the data).
        if n_found < min_size or max(coverage, n_found / len(self.genes)) < min_coverage:
            raise InputError(self._no_match_message(genes, n_found, coverage))

        # Selection matrix library gene -> dataset column; incidence @ sel puts the sets on
        # the dataset's genes in dataset order (unmatched dataset genes get empty columns).
        sel = sp.csr_matrix(
            (np.ones(n_found, dtype=np.int8), (lib_col[found], np.flatnonzero(found))),
            shape=(len(self.genes), n_genes),
        )
        inc = (self.incidence @ sel).tocsr()
        inc.data[:] = 1
        sizes = np.diff(inc.indptr)
        keep = (sizes >= min_size) & (sizes <= max_size)
        report = MatchReport(
            library=self.name,
            n_dataset_genes=n_genes,
            n_matched_genes=n_found,
            n_case_insensitive=n_ci,
            n_library_genes=len(self.genes),
            n_sets=len(self.names),
            n_sets_kept=int(keep.sum()),
            n_sets_too_small=int((sizes < min_size).sum()),
            n_sets_too_large=int((sizes > max_size).sum()),
            min_size=min_size,
            max_size=max_size,
        )
        if not keep.any():
            raise InputError(
                f"no gene set of {self.name!r} has between {min_size} and {max_size} genes in the "
                f"dataset ({n_found} of {n_genes} dataset genes are in the library); "
                "lower min_size or use a larger gene list"
            )
        kept = np.flatnonzero(keep)
        return MatchedLibrary(
            library=self.name,
            genes=np.asarray(genes, dtype=object),
            set_names=[self.names[i] for i in kept],
            descriptions=[self.descriptions[i] for i in kept],
            incidence=inc[kept],
            in_library=found,
            report=report,
        )

    def _no_match_message(self, genes: list[str], n_found: int, coverage: float) -> str:
        data_kind, lib_kind = gene_id_kind(genes), gene_id_kind(self.genes.tolist())
        head = (
            f"only {n_found} of {len(genes)} dataset genes ({coverage:.1%}) are in gene-set "
            f"library {self.name!r}"
        )
        ex_data = ", ".join(genes[:3])
        ex_lib = ", ".join(self.genes[:3].tolist())
        if data_kind != lib_kind:
            fix = {
                "ensembl": "convert the dataset's Ensembl IDs to gene symbols (e.g. "
                "adata.var_names = adata.var['gene_symbols']; adata.var_names_make_unique())",
                "entrez": "convert the dataset's Entrez IDs to gene symbols",
                "symbol": f"map the dataset genes to {lib_kind} IDs",
            }[data_kind]
            return (
                f"{head}: the dataset genes look like {data_kind} IDs (e.g. {ex_data}) but the "
                f"library uses {lib_kind} IDs (e.g. {ex_lib}); {fix}, or pass a GMT with "
                f"matching identifiers"
            )
        return (
            f"{head} (dataset e.g. {ex_data}; library e.g. {ex_lib}); check the species "
            "(use go_bp_mouse for mouse data) and that both use the same kind of gene identifier"
        )


def read_gmt(path: PathLike, name: str | None = None) -> GeneSetLibrary:
    """Read a GMT file (plain or ``.gz``) into a :class:`GeneSetLibrary`.

    Parameters
    ----------
    path
        File to read.
    name
        Library name used in reports; defaults to the file name without extensions.
    """
    path = Path(path)
    records = list(iter_gmt(path))
    if not records:
        raise InputError(f"gene-set file {str(path)!r} contains no gene sets")
    if not any(genes for _, _, genes in records):
        raise InputError(f"gene-set file {str(path)!r} has {len(records)} sets but no genes: each line must be "
                         "NAME<TAB>DESCRIPTION<TAB>GENE1<TAB>GENE2...")
    if name is None:
        name = path.name.split(".gmt")[0] if ".gmt" in path.name else path.stem
    return GeneSetLibrary.from_records(records, name=name)


@dataclass(frozen=True)
class MatchReport:
    """How well a library matched a dataset's genes."""

    library: str
    n_dataset_genes: int
    n_matched_genes: int
    n_case_insensitive: int
    n_library_genes: int
    n_sets: int
    n_sets_kept: int
    n_sets_too_small: int
    n_sets_too_large: int
    min_size: int
    max_size: int

    @property
    def coverage(self) -> float:
        """Fraction of the dataset's genes found in the library."""
        return self.n_matched_genes / self.n_dataset_genes

    @property
    def library_coverage(self) -> float:
        """Fraction of the library's genes found in the dataset."""
        return self.n_matched_genes / self.n_library_genes

    @property
    def likely_species_mismatch(self) -> bool:
        """True when most matches needed case folding (e.g. mouse symbols vs a human library)."""
        return self.n_case_insensitive > 0.5 * self.n_matched_genes

    def __str__(self) -> str:
        ci = f", {self.n_case_insensitive:,} of them ignoring case" if self.n_case_insensitive else ""
        text = (
            f"{self.library}: {self.n_matched_genes:,} of {self.n_dataset_genes:,} dataset genes "
            f"({self.coverage:.1%}) found in the library{ci}; {self.n_sets_kept:,} of "
            f"{self.n_sets:,} sets kept with {self.min_size}..{self.max_size} genes in the dataset "
            f"({self.n_sets_too_small:,} too small, {self.n_sets_too_large:,} too large)"
        )
        if self.likely_species_mismatch:
            text += "; most genes matched only ignoring case: check the species of the library"
        return text


@dataclass(frozen=True, eq=False)
class MatchedLibrary:
    """A library restricted to the sets usable on one dataset.

    Attributes
    ----------
    library
        Name of the source library.
    genes
        The dataset's genes, in dataset order (the incidence columns).
    set_names, descriptions
        The kept sets.
    incidence
        ``(n_kept_sets, n_dataset_genes)`` CSR matrix of 0/1.
    in_library
        Boolean mask over dataset genes: present in any set of the library (before the
        size filter). This is the ORA background.
    report
        The :class:`MatchReport`.
    """

    library: str
    genes: np.ndarray
    set_names: list[str]
    descriptions: list[str]
    incidence: sp.csr_matrix
    in_library: np.ndarray
    report: MatchReport

    @property
    def sizes(self) -> np.ndarray:
        """Number of dataset genes in each kept set."""
        return np.diff(self.incidence.indptr)

    def __len__(self) -> int:
        return len(self.set_names)

    def __repr__(self) -> str:
        return f"MatchedLibrary({self.report})"
