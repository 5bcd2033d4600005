"""benchmarks/make_scaled.py: resampled, thinned real cells written chunk by chunk."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import shared_file

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_scaled.py"


@pytest.fixture(scope="module")
def make_scaled():
    spec = importlib.util.spec_from_file_location("make_scaled", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def source():
    return shared_file("kang2018_pbmc_ctrl_8donors.h5ad")


def test_scaled_file_keeps_structure_and_labels(make_scaled, source, tmp_path):
    out = tmp_path / "s.h5ad"
    stats = make_scaled.make_scaled(5000, out, source=source, seed=1, chunk=2000, thin=0.9)
    assert not list(tmp_path.glob("*.tmp"))
    src = ad.read_h5ad(source)
    backed = ad.read_h5ad(out, backed="r")
    assert backed.shape == (5000, src.n_vars) and stats["nnz"] == backed.X.group["data"].shape[0]
    assert list(backed.var_names) == list(src.var_names)
    assert backed.obs_names.is_unique
    rows = backed.X[1000:1100]  # a backed row slice across the written chunks
    assert sp.issparse(rows) and rows.shape == (100, src.n_vars)
    backed.file.close()

    a = ad.read_h5ad(out)
    X = sp.csr_matrix(a.X)
    X.check_format(full_check=True)
    assert np.all(X.data > 0) and np.all(X.data == np.round(X.data))  # integers, zeros dropped
    pos = src.obs_names.get_indexer(a.obs["source_cell"].astype(str))
    assert (pos >= 0).all()
    for col in ("cell_type", "batch"):
        assert a.obs[col].dtype == "category"
        np.testing.assert_array_equal(a.obs[col].to_numpy(), src.obs[col].to_numpy()[pos])
    S = sp.csr_matrix(src.X)[pos].astype(np.float32)
    diff = (S - X).toarray()
    assert diff.min() >= 0  # thinning never adds counts
    # About 90% of the counts survive, with real per-cell spread around the mean.
    kept = np.asarray(X.sum(1)).ravel() / np.asarray(S.sum(1)).ravel()
    assert 0.87 < kept.mean() < 0.93 and 0.005 < kept.std() < 0.06
    # All source cell types are represented.
    assert set(a.obs["cell_type"].unique()) == set(src.obs["cell_type"].unique())


def test_same_seed_same_file_whatever_the_chunk(make_scaled, source, tmp_path):
    a = make_scaled.make_scaled(1500, tmp_path / "a.h5ad", source=source, seed=3, chunk=400)
    b = make_scaled.make_scaled(1500, tmp_path / "b.h5ad", source=source, seed=3, chunk=1500)
    c = make_scaled.make_scaled(1500, tmp_path / "c.h5ad", source=source, seed=4, chunk=400)
    A, B, C = (ad.read_h5ad(s["out"]) for s in (a, b, c))
    assert (A.X != B.X).nnz == 0
    np.testing.assert_array_equal(A.obs["source_cell"], B.obs["source_cell"])
    assert (A.X != C.X).nnz > 0


def test_thin_one_copies_source_cells(make_scaled, source, tmp_path):
    out = make_scaled.make_scaled(300, tmp_path / "t.h5ad", source=source, seed=0, chunk=128,
                                  thin=1.0)["out"]
    a = ad.read_h5ad(out)
    src = ad.read_h5ad(source)
    pos = src.obs_names.get_indexer(a.obs["source_cell"].astype(str))
    assert (sp.csr_matrix(src.X)[pos].astype(np.float32) != a.X).nnz == 0


def test_command_line(source, tmp_path):
    out = tmp_path / "cli.h5ad"
    res = subprocess.run([sys.executable, str(SCRIPT), "--n-cells", "700", "--chunk", "300",
                          "--out", str(out), "--source", str(source), "--compression", "gzip"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "peak RSS" in res.stdout
    assert ad.read_h5ad(out, backed="r").shape[0] == 700


def test_bad_arguments(make_scaled, source, tmp_path):
    with pytest.raises(ValueError, match="thin"):
        make_scaled.make_scaled(10, tmp_path / "x.h5ad", source=source, thin=0)
    with pytest.raises(ValueError, match="n_cells"):
        make_scaled.make_scaled(0, tmp_path / "x.h5ad", source=source)
