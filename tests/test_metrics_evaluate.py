"""``evaluate`` and ``sctopic evaluate`` end to end on a small real result.h5ad.

The result file follows the model contract: theta from an NMF of 600 pbmc3k cells
(1,000 variable genes, 12 topics), the NMF loadings as topic-gene matrix.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from sctopic.metrics import FLAT_KEYS, evaluate

PBMC3K = Path("/work/shared/data/pbmc3k_seurat_labels.h5ad")
FAST = dict(genesets=("hallmark",), permutations=50, resolutions=[0.5, 1.0, 1.5])


def make_result(path: Path, n_cells: int = 600, n_genes: int = 1000, k: int = 12) -> Path:
    import anndata as ad
    import scipy.sparse as sp
    from sklearn.decomposition import NMF

    a = ad.read_h5ad(PBMC3K)
    rng = np.random.default_rng(0)
    a = a[np.sort(rng.choice(a.n_obs, n_cells, replace=False))].copy()
    x = sp.csr_matrix(a.X, dtype=np.float32)
    lognorm = sp.diags(1e4 / np.asarray(x.sum(1)).ravel()) @ x
    lognorm.data = np.log1p(lognorm.data)
    mean = np.asarray(lognorm.mean(0)).ravel()
    var = np.asarray(lognorm.multiply(lognorm).mean(0)).ravel() - mean**2
    genes = np.sort(np.argsort(-var)[:n_genes])
    a = a[:, genes].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nmf = NMF(k, init="nndsvda", max_iter=200, random_state=0)
        w = nmf.fit_transform(lognorm[:, genes])
    theta = (w + 1e-9) / (w + 1e-9).sum(1, keepdims=True)
    a.obsm["X_nmf"] = theta
    a.obsm["X_nmf_logits"] = np.log(theta)
    a.obsm["X_pca_like"] = w
    a.uns["sctopic"] = {"model": "nmf"}
    a.uns["nmf"] = {"topic_gene": nmf.components_}
    a.obs["donor"] = np.where(rng.random(n_cells) < 0.5, "d1", "d2")  # random: well mixed
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs = a.obs[["cell_type", "donor"]]
    path.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path / "result.h5ad")
    return path


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory):
    if not PBMC3K.exists():
        pytest.skip("pbmc3k data not staged")
    return make_result(tmp_path_factory.mktemp("fit") / "run")


def test_evaluate_keys_and_values(result_dir):
    res = evaluate(result_dir, labels="cell_type", batch_key="donor", **FAST)
    for key in FLAT_KEYS:
        assert key in res
        assert res[key] is not None, key
    assert 0.1 < res["ari_oracle"] <= 1 and res["ari_oracle"] >= res["ari_fixed"]
    assert res["resolution_oracle"] in (0.5, 1.0, 1.5)
    assert 0 <= res["asw"] <= 1 and res["kbet"] > 0.7 and res["batch_asw"] > 0.7
    assert 0 < res["td_exclusive"] <= res["td"] <= 1
    assert res["tq"] == pytest.approx(res["tc"] * res["td"])
    assert 0 < res["ip"] <= 1
    assert res["ora_q"] == pytest.approx(res["ora_n"] * res["ora_u"])
    assert res["n_cells"] == 600 and res["n_topics"] == 12 and res["model"] == "nmf"
    assert res["use_rep"] == "X_nmf"
    assert set(res["genesets"]) == {"hallmark"}
    assert res["genesets"]["hallmark"]["tc"] == res["tc"]
    assert {"clustering", "load", "total"} <= set(res["seconds"])
    assert 0 < res["accuracy_fixed"]["overall"] <= 1
    json.dumps(res, allow_nan=False)  # JSON-ready
    # same seed, same numbers
    again = evaluate(result_dir, labels="cell_type", batch_key="donor", **FAST)
    strip = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert strip(again) == strip(res)


def test_evaluate_missing_inputs_are_null(result_dir):
    import anndata as ad

    adata = ad.read_h5ad(result_dir / "result.h5ad")
    res = evaluate(adata, genesets=(), permutations=0, resolutions=[1.0])
    for key in ("ari_oracle", "nmi_oracle", "ari_fixed", "asw", "ip", "kbet", "batch_asw",
                "tc", "tq", "ora_n", "gsea_n"):
        assert res[key] is None, key
    assert res["td"] is not None and res["n_clusters_fixed"] >= 1
    # labels only: batch metrics stay null; GSEA skipped with 0 permutations
    res = evaluate(adata, labels="cell_type", genesets=["hallmark"], permutations=0,
                   resolutions=[1.0], use_rep="X_pca_like")
    assert res["kbet"] is None and res["batch_asw"] is None and res["gsea_n"] is None
    assert res["ora_n"] is not None and res["use_rep"] == "X_pca_like"


def test_evaluate_several_libraries_first_is_flat(result_dir, tmp_path):
    from sctopic.genesets import load

    gmt = tmp_path / "immune.gmt"
    load("hallmark").to_gmt(gmt)
    res = evaluate(result_dir / "result.h5ad", labels="cell_type", genesets=["go_bp_human", str(gmt)],
                   permutations=0, resolutions=[1.0])
    assert list(res["genesets"]) == ["go_bp_human", "immune"]
    assert res["tc"] == res["genesets"]["go_bp_human"]["tc"]
    assert res["ora_n"] == res["genesets"]["go_bp_human"]["ora_n"]


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "sctopic", "evaluate", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env,
    )


def test_cli_end_to_end(result_dir, tmp_path):
    out = tmp_path / "sub" / "eval.json"
    proc = run_cli(result_dir, "--labels", "cell_type", "--batch-key", "donor",
                   "--genesets", "hallmark", "--permutations", "50", "--seed", "0", "--json", out)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert set(FLAT_KEYS) <= set(res) and res["kbet"] is not None
    assert "ari_oracle" in proc.stdout
    assert not list(out.parent.glob("*.tmp"))  # atomic write left no temporary file


def test_cli_errors(result_dir, tmp_path, capsys):
    from sctopic.cli import main

    def err(*args):
        code = main(["evaluate", *map(str, args)])
        text = capsys.readouterr().err
        assert code == 2, text
        assert len(text.strip().splitlines()) == 1, text  # one clear line
        return text

    assert "no such file or directory" in err(tmp_path / "nowhere", "--labels", "cell_type")
    (tmp_path / "empty").mkdir()
    assert "result.h5ad" in err(tmp_path / "empty", "--labels", "cell_type")
    text = err(result_dir, "--labels", "celltype", "--genesets", "none")
    assert "no label column 'celltype'" in text and "cell_type, donor" in text
    assert "X_nmf" in err(result_dir, "--use-rep", "X_umap", "--genesets", "none")
    assert "no_such_library" in err(result_dir, "--genesets", "no_such_library", "--permutations", "0")
    assert "--permutations" in err(result_dir, "--permutations", "-1")


def test_metrics_never_import_torch(result_dir):
    code = (
        "import sys, sctopic.metrics, sctopic.commands.evaluate\n"
        f"sctopic.metrics.evaluate({str(result_dir)!r}, labels='cell_type', genesets=['hallmark'],"
        " permutations=10, resolutions=[1.0])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
