"""Gene-set IO, bundled libraries, matching to a dataset, reading results and ``sctopic enrich``."""
from __future__ import annotations

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import shared_file
from sctopic.errors import InputError
from sctopic.genesets import (
    GeneSetLibrary,
    available,
    iter_gmt,
    load,
    read_gmt,
    read_topic_gene,
    write_gmt,
)

SETS = {
    "S1": ["A", "B", "C", "D", "E"],
    "S2": ["C", "D", "E", "F", "G", "H"],
    "S3": ["X", "Y"],
}


@pytest.fixture(scope="module")
def pbmc_genes() -> list[str]:
    """The 13,714 real gene symbols of pbmc3k (var only, no expression read)."""
    a = ad.read_h5ad(shared_file("pbmc3k_seurat_labels.h5ad"), backed="r")
    genes = list(map(str, a.var_names))
    a.file.close()
    return genes


# ------------------------------------------------------------------------------ GMT
@pytest.mark.parametrize("suffix", [".gmt", ".gmt.gz"])
def test_gmt_round_trip(tmp_path, suffix):
    lib = GeneSetLibrary.from_dict(SETS, descriptions={"S1": "first set"}, name="toy")
    path = tmp_path / f"toy{suffix}"
    write_gmt(lib, path)
    back = read_gmt(path)
    assert back.name == "toy"
    assert back.names == lib.names
    assert back.descriptions == ["first set", "na", "na"]
    assert back.to_dict() == SETS
    assert (back.incidence != lib.incidence).nnz == 0
    if suffix.endswith(".gz"):
        with gzip.open(path, "rt") as fh:
            assert fh.readline() == "S1\tfirst set\tA\tB\tC\tD\tE\n"
        first = path.read_bytes()
        write_gmt(lib, path)  # reproducible bytes (no timestamp in the gzip header)
        assert path.read_bytes() == first


def test_write_gmt_from_mapping_and_to_gmt(tmp_path):
    write_gmt(SETS, tmp_path / "m.gmt")
    assert read_gmt(tmp_path / "m.gmt").to_dict() == SETS
    load(tmp_path / "m.gmt").to_gmt(tmp_path / "again.gmt.gz")
    assert load(str(tmp_path / "again.gmt.gz")).to_dict() == SETS


def test_gmt_parsing_rules(tmp_path):
    path = tmp_path / "messy.gmt"
    path.write_text("# comment\n\nA\tdesc\tg1\t g2 \tg1\t\r\nB\t\tg3\n")
    assert list(iter_gmt(path)) == [("A", "desc", ["g1", "g2"]), ("B", "", ["g3"])]
    lib = read_gmt(path)
    assert lib.descriptions == ["desc", "na"]
    assert lib.members("A") == ["g1", "g2"]
    assert list(lib.sizes) == [2, 1]

    path.write_text("A\tna\tg1\nA\tna\tg2\n")
    with pytest.raises(InputError, match="occurs twice"):
        read_gmt(path)
    with pytest.raises(InputError, match="does not exist"):
        read_gmt(tmp_path / "nope.gmt")
    (tmp_path / "bin.gmt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="not a readable GMT"):
        read_gmt(tmp_path / "bin.gmt.gz")


# ------------------------------------------------------------------------------ bundled
def test_bundled_libraries():
    assert set(available()) == {"go_bp_human", "go_bp_mouse", "hallmark"}
    hall = load("hallmark")
    assert hall.name == "hallmark" and len(hall) == 50
    assert "HALLMARK_INTERFERON_ALPHA_RESPONSE" in hall
    assert "ISG15" in hall.members("HALLMARK_INTERFERON_ALPHA_RESPONSE")
    assert load("HALLMARK") is hall  # cached, case-insensitive name

    human, mouse = load("go_bp_human"), load("go_bp_mouse")
    assert len(human) == 7853 and len(mouse) == 7420
    assert human.descriptions[human.names.index("GO:0000002")] == "mitochondrial genome maintenance"
    assert human.sizes.min() >= 5 and human.sizes.max() <= 500
    assert "Cd74" in set(mouse.genes.tolist()) and "CD74" in set(human.genes.tolist())

    with pytest.raises(InputError, match="neither a bundled name"):
        load("kegg")


# ------------------------------------------------------------------------------ matching
def test_match_incidence_in_dataset_order():
    lib = GeneSetLibrary.from_dict(SETS, name="toy")
    genes = ["H", "Q", "A", "B", "C", "D", "E", "F", "G", "Z"]
    m = lib.match(genes, min_size=3, max_size=5, min_coverage=0.0)
    assert m.set_names == ["S1"]  # S2 has 6 genes (> 5), S3 none in data
    assert list(m.genes) == genes
    dense = m.incidence.toarray()
    assert dense.shape == (1, len(genes))
    assert [genes[j] for j in np.flatnonzero(dense[0])] == ["A", "B", "C", "D", "E"]
    assert list(m.in_library) == [g in {"A", "B", "C", "D", "E", "F", "G", "H"} for g in genes]
    rep = m.report
    assert (rep.n_matched_genes, rep.n_dataset_genes) == (8, 10)
    assert rep.coverage == pytest.approx(0.8)
    assert (rep.n_sets, rep.n_sets_kept, rep.n_sets_too_small, rep.n_sets_too_large) == (3, 1, 1, 1)
    assert "8 of 10 dataset genes (80.0%)" in str(rep)
    assert len(m) == 1 and list(m.sizes) == [5]


def test_match_case_insensitive_only_when_unambiguous():
    lib = GeneSetLibrary.from_dict(
        {"S": ["CD74", "ACTB", "Foo", "FOO", "GAPDH", "B2M"]}, name="toy"
    )
    genes = ["Cd74", "actb", "foo", "GAPDH", "B2M", "b2m", "other"]
    m = lib.match(genes, min_size=1, min_coverage=0.0)
    hit = {genes[j] for j in np.flatnonzero(m.incidence.toarray()[0])}
    # foo is ambiguous (Foo / FOO); b2m loses to the exact B2M
    assert hit == {"Cd74", "actb", "GAPDH", "B2M"}
    assert m.report.n_case_insensitive == 2
    strict = lib.match(genes, min_size=1, case_insensitive=False, min_coverage=0.0)
    assert strict.report.n_matched_genes == 2


def test_match_species_mismatch_flagged(pbmc_genes):
    mouse_like = [g.capitalize() for g in pbmc_genes[:3000]]
    # matched only after upper-casing: refused by default, with the fix named (issue 18, item 8)
    with pytest.raises(InputError, match=r"mostly after upper-casing .*go_bp_mouse"):
        load("hallmark").match(mouse_like)
    rep = load("hallmark").match(mouse_like, case_insensitive=True).report
    assert rep.likely_species_mismatch
    assert "check the species" in str(rep)


def test_match_real_genes(pbmc_genes):
    m = load("hallmark").match(pbmc_genes)
    assert len(m) == 50
    assert 0.2 < m.report.coverage < 0.4
    assert m.report.n_case_insensitive == 0
    assert m.incidence.shape == (50, len(pbmc_genes))
    # sizes are overlaps with the dataset, never more than the library set sizes
    lib = load("hallmark")
    full = dict(zip(lib.names, lib.sizes))
    assert all(s <= full[n] for n, s in zip(m.set_names, m.sizes))


def test_match_errors(pbmc_genes):
    lib = load("hallmark")
    ensembl = [f"ENSG{i:011d}" for i in range(2000)]
    with pytest.raises(InputError, match="Ensembl") as err:
        lib.match(ensembl)
    assert "gene symbols" in str(err.value)
    with pytest.raises(InputError, match="unique"):
        lib.match(["A", "B", "A"])
    with pytest.raises(InputError, match="no gene set"):
        lib.match(pbmc_genes, min_size=400)
    with pytest.raises(InputError, match="species"):
        lib.match([f"gene{i}" for i in range(500)])


# ------------------------------------------------------------------------------ results + CLI
def _write_result(path, genes, topic_gene, model="sce2tm", transpose=False):
    adata = ad.AnnData(
        X=sp.csr_matrix((4, len(genes)), dtype=np.float32),
        var=pd.DataFrame(index=pd.Index(genes, dtype=str)),
    )
    adata.uns["sctopic"] = {"model": model, "version": "0.1.0"}
    adata.uns[model] = {"topic_gene": topic_gene.T if transpose else topic_gene}
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory, pbmc_genes):
    """A tiny fitted-model directory: 3 random positive topics over real pbmc3k genes;
    topic 0 puts its largest weights on the interferon-alpha hallmark genes."""
    rng = np.random.default_rng(0)
    tg = rng.gamma(1.0, 1.0, size=(3, len(pbmc_genes)))
    ifn = set(load("hallmark").members("HALLMARK_INTERFERON_ALPHA_RESPONSE"))
    tg[0, [i for i, g in enumerate(pbmc_genes) if g in ifn]] += 20.0
    tg /= tg.sum(axis=1, keepdims=True)
    d = tmp_path_factory.mktemp("fit")
    _write_result(d / "result.h5ad", pbmc_genes, tg)
    return d, tg


def test_read_topic_gene(result_dir, pbmc_genes, tmp_path):
    d, tg = result_dir
    for src in (d, d / "result.h5ad", str(d)):
        got, genes, model = read_topic_gene(src)
        assert model == "sce2tm" and genes == pbmc_genes
        np.testing.assert_array_equal(got, tg)
    _write_result(tmp_path / "t.h5ad", pbmc_genes[:50], tg[:, :50], model="scetm", transpose=True)
    got, _, model = read_topic_gene(tmp_path / "t.h5ad")
    assert model == "scetm" and got.shape == (3, 50)

    with pytest.raises(InputError, match="no result.h5ad"):
        read_topic_gene(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_topic_gene(tmp_path / "missing")
    ad.AnnData(X=np.zeros((2, 3), dtype=np.float32)).write_h5ad(tmp_path / "plain.h5ad")
    with pytest.raises(InputError, match="sctopic"):
        read_topic_gene(tmp_path / "plain.h5ad")


def test_enrich_cli_end_to_end(result_dir, pbmc_genes, tmp_path, capsys):
    from sctopic.cli import main

    d, _ = result_dir
    out = tmp_path / "enrich.tsv"
    rc = main(["enrich", str(d), "--genesets", "hallmark", "--permutations", "200",
               "--top-n", "20", "--seed", "3", "--leading-edge", "--all", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "hallmark: " in printed and "wrote 300 rows" in printed
    table = pd.read_csv(out, sep="\t")
    assert len(table) == 2 * 3 * 50
    for col in ("library", "topic", "set", "method", "statistic", "es", "p", "fdr", "fdr_nes",
                "set_size", "genes", "leading_edge"):
        assert col in table.columns
    assert set(table["method"]) == {"ora", "gsea"}
    t0 = table[table.topic == 0].set_index(["method", "set"])
    ifn = "HALLMARK_INTERFERON_ALPHA_RESPONSE"
    ora0, gsea0 = t0.loc["ora"], t0.loc["gsea"]
    assert ora0.loc[ifn, "statistic"] == 20 and ora0["p"].idxmin() == ifn
    assert ora0.loc[ifn, "fdr"] < 1e-10
    assert gsea0.loc[ifn, "es"] == pytest.approx(1.0) and gsea0["es"].idxmax() == ifn
    assert gsea0.loc[ifn, "p"] == gsea0["p"].min() and gsea0.loc[ifn, "fdr"] < 0.05
    assert gsea0.loc[ifn, "statistic"] == gsea0["statistic"].max()
    assert set(gsea0.loc[ifn, "leading_edge"].split(",")) <= set(load("hallmark").members(ifn))

    # By default: what a person reads, FDR <= 0.05 plus each topic's 3 best sets per method.
    short = tmp_path / "short.tsv"
    assert main(["-q", "enrich", str(d), "--genesets", "hallmark", "--permutations", "200",
                 "--top-n", "20", "--seed", "3", "--leading-edge", "--out", str(short)]) == 0
    default = pd.read_csv(short, sep="\t")
    ranks = table.groupby(["method", "topic"])["p"].rank(method="first")
    expected = table[(table["fdr"] <= 0.05) | (ranks <= 3)]
    assert len(default) == len(expected) < len(table)
    assert (default.groupby(["method", "topic"]).size() >= 3).all()
    pd.testing.assert_frame_equal(default.reset_index(drop=True), expected.reset_index(drop=True))

    # --method, --max-fdr and a GMT path
    gmt = tmp_path / "mine.gmt"
    ifn_genes = load("hallmark").members(ifn)
    write_gmt({"IFN": ifn_genes, "OTHER": [g for g in pbmc_genes[::50] if g not in ifn_genes]}, gmt)
    out2 = tmp_path / "sub.tsv"
    rc = main(["-q", "enrich", str(d / "result.h5ad"), "-g", str(gmt), "--method", "ora",
               "--max-fdr", "0.05", "--top-per-topic", "0", "--out", str(out2)])
    assert rc == 0
    sub = pd.read_csv(out2, sep="\t")
    assert (sub["fdr"] <= 0.05).all() and set(sub["library"]) == {"mine"}
    assert list(sub.loc[sub.topic == 0, "set"]) == ["IFN"]


def test_enrich_cli_errors(result_dir, tmp_path, capsys):
    from sctopic.cli import main

    d, _ = result_dir
    rc = main(["enrich", str(tmp_path / "nodir"), "--genesets", "hallmark", "--out", str(tmp_path / "x.tsv")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    rc = main(["enrich", str(d), "--genesets", "kegg", "--out", str(tmp_path / "x.tsv")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "sctopic enrich: error:" in err and "kegg" in err
    assert not (tmp_path / "x.tsv").exists()
    # An unwritable destination fails at once, naming it.
    (tmp_path / "afile").write_text("")
    rc = main(["enrich", str(d), "--genesets", "hallmark", "--out", str(tmp_path / "afile" / "x.tsv")])
    assert rc == 2 and "cannot write" in capsys.readouterr().err


def test_enrich_does_not_import_torch(result_dir, tmp_path):
    import subprocess
    import sys

    d, _ = result_dir
    code = (
        "import sys; from sctopic.cli import main; "
        f"rc = main(['-q', 'enrich', {str(d)!r}, '-g', 'hallmark', '--permutations', '20', "
        f"'--out', {str(tmp_path / 'o.tsv')!r}]); "
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_uppercase_mouse_genes_need_an_explicit_case_policy():
    """Baron's mouse genes are stored in upper case (INS1 for Ins1): by symbols alone that looks
    like human data, so the mouse library is refused by default (issue 18, item 8), and
    ``matching_case(True)`` (the bench's ``case_insensitive_genes``) accepts it without changing
    the cached library."""
    import anndata as ad

    from conftest import shared_file

    genes = [str(g) for g in ad.read_h5ad(shared_file("baron_mouse_pancreas.h5ad"), backed="r").var_names]
    genes = [g for g in genes if not g.startswith("unmapped_gene_")][:3000]
    mouse = load("go_bp_mouse")
    with pytest.raises(InputError, match="mostly after upper-casing"):
        mouse.match(genes)
    relaxed = mouse.matching_case(True)
    m = relaxed.match(genes)
    assert m.report.n_case_insensitive > 1000 and len(m) > 100
    assert mouse.case_insensitive is None and load("go_bp_mouse") is mouse  # cache untouched
    with pytest.raises(InputError, match="between 5 and 500"):  # an explicit False still wins: exact only
        relaxed.match(genes, case_insensitive=False, min_coverage=0.0)
