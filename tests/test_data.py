"""Data layer: validation errors, gene selection, minibatch slicing."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from sctopic.data.counts import get_counts, log_normalize, select_genes
from sctopic.data.io import read_adata
from sctopic.data.loader import RowStore, batch_indices
from sctopic.data.validate import check_embedding
from sctopic.errors import InputError


def test_counts_from_sparse_and_dense_layer(small_adata):
    X = get_counts(small_adata)
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    small_adata.layers["counts"] = small_adata.X.toarray()
    np.testing.assert_array_equal(get_counts(small_adata, "counts").toarray(), X.toarray())


def test_lognormalised_data_is_refused_with_the_fix(small_adata):
    small_adata.X = log_normalize(small_adata.X)
    with pytest.raises(InputError, match="non-integer.*layer="):
        get_counts(small_adata)


def test_negative_nan_inf_refused(small_adata):
    X = small_adata.X.toarray().astype(np.float32)
    for bad, pat in ((-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")):
        Y = X.copy()
        Y[3, 5] = bad
        with pytest.raises(InputError, match=pat):
            get_counts(ad.AnnData(Y))


def test_missing_layer_names_available(small_adata):
    small_adata.layers["raw"] = small_adata.X.copy()
    with pytest.raises(InputError, match="layer 'counts' not found.*'raw'"):
        get_counts(small_adata, "counts")


def test_duplicate_genes_refused(small_adata):
    names = small_adata.var_names.to_list()
    names[1] = names[0]
    small_adata.var_names = names
    with pytest.raises(InputError, match="duplicate gene names.*var_names_make_unique"):
        get_counts(small_adata)


def test_read_adata_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_adata(tmp_path / "missing.h5ad")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="not an .h5ad"):
        read_adata(tmp_path / "x.csv")


def test_embedding_checks(small_adata):
    n = small_adata.n_obs
    good = np.random.default_rng(0).normal(size=(n, 7))
    assert check_embedding(good, small_adata.obs_names).shape == (n, 7)
    with pytest.raises(InputError, match="rows but the data has"):
        check_embedding(good[:-1], small_adata.obs_names)
    bad = good.copy()
    bad[4, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_embedding(bad, small_adata.obs_names)
    df = pd.DataFrame(good, index=small_adata.obs_names)[::-1]
    np.testing.assert_allclose(check_embedding(df, small_adata.obs_names), good.astype(np.float32))
    with pytest.raises(InputError, match="have no row"):
        check_embedding(df.iloc[1:], small_adata.obs_names)


def test_select_genes_follows_scanpy_hvg(small_adata):
    import scanpy as sc

    out = select_genes(small_adata, 200)
    assert out.n_vars == 200
    ref = small_adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, n_top_genes=200, flavor="seurat")
    assert set(out.var_names) == set(ref.var_names[ref.var["highly_variable"]])
    # Raw counts are kept, and N=0 keeps every gene.
    np.testing.assert_array_equal(out.X.toarray(), small_adata[:, out.var_names].X.toarray())
    assert select_genes(small_adata, 0) is small_adata


def test_rowstore_csr_equals_dense_and_scipy(small_adata):
    X = get_counts(small_adata)
    idx = torch.tensor([5, 0, 299, 5, 17])
    dense = RowStore(X, storage="dense").rows(idx)
    csr = RowStore(X, storage="csr").rows(idx)
    assert torch.equal(dense, csr)
    np.testing.assert_array_equal(csr.numpy(), X[idx.numpy()].toarray())


def test_batch_indices_cover_all_cells_once():
    g = torch.Generator().manual_seed(0)
    batches = list(batch_indices(1025, 512, True, g, "cpu"))
    allidx = torch.cat(batches).sort().values
    assert torch.equal(allidx, torch.arange(1025))
    assert all(len(b) >= 2 for b in batches)  # a lone last cell is merged (batch norm)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_outputs_honour_the_umask(tmp_path, umask):
    # Outputs are written to a private temporary file and renamed; the result must have the
    # mode any new file gets (0666 less the umask), not the temporary file's 0600.
    import os
    import stat

    from sctopic.data.io import atomic_write, write_text_atomic

    old = os.umask(umask)
    try:
        out = write_text_atomic("x", tmp_path / "a.txt")
        other = atomic_write(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").write(b"1"))
    finally:
        os.umask(old)
    for p in (out, other):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]  # no temporaries left
