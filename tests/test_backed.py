"""Out-of-core (backed) data: block reads, minibatches, gene selection, training and outputs."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import shared_file
from sctopic.data.backed import (
    BackedCounts,
    BackedMinibatches,
    scan_counts,
    select_genes_backed,
)
from sctopic.errors import InputError


@pytest.fixture(scope="module")
def pbmc_file(tmp_path_factory, pbmc_small):
    """The bundled real PBMCs written to disk as CSR, with a counts layer too."""
    path = tmp_path_factory.mktemp("backed") / "pbmc.h5ad"
    a = pbmc_small.copy()
    a.X = sp.csr_matrix(a.X, dtype=np.float32)
    a.layers["counts"] = a.X.copy()
    a.write_h5ad(path)
    return path, a


def test_block_and_scattered_reads_equal_the_matrix(pbmc_file):
    path, a = pbmc_file
    X = sp.csr_matrix(a.X)
    rng = np.random.default_rng(0)
    cols = np.sort(rng.choice(a.n_vars, 300, replace=False))[::-1].copy()  # any column order
    rows = np.sort(rng.choice(a.n_obs, 500, replace=False))
    full = BackedCounts(path)
    view = full.subset(rows=rows, cols=cols)
    ref = X[rows][:, cols]
    assert view.shape == ref.shape
    assert (view.to_memory() != ref).nnz == 0
    assert (view.block(17, 230) != ref[17:230]).nnz == 0
    pick = np.array([0, 3, 4, 99, 250, 499])
    assert (view.take(pick) != ref[pick]).nnz == 0
    assert (BackedCounts(path, "counts").block(5, 9) != X[5:9]).nnz == 0
    assert view.count_summary() == (ref.nnz, pytest.approx(float(ref.sum())))


@pytest.mark.parametrize("shared_memory", [True, False])
def test_row_reader_process_reads_the_same_rows(pbmc_file, tmp_path, monkeypatch, shared_memory):
    """Scattered rows read by the helper process equal those read through h5py here."""
    import os

    from sctopic.data.rowreader import RowReaderProcess

    if not shared_memory:  # the pipe-only protocol (platforms without memfd_create)
        monkeypatch.delattr(os, "memfd_create", raising=False)
    path, a = pbmc_file
    X = sp.csr_matrix(a.X)
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(a.n_obs, 400, replace=False))
    cols = np.sort(rng.choice(a.n_vars, 200, replace=False))
    view = BackedCounts(path, "counts").subset(rows=rows, cols=cols)
    reader = view.row_reader()
    assert isinstance(reader, RowReaderProcess)
    try:
        for size in (1, 37, 400):  # growing requests (the shared buffer grows)
            pick = np.sort(rng.choice(400, size, replace=False))
            got = view.take(pick, reader=reader)
            assert got.dtype == np.float32
            assert (got != X[rows[pick]][:, cols]).nnz == 0
        assert reader._proc is not None and reader._proc.poll() is None
    finally:
        reader.close()
    assert reader._proc is None and reader._fd == -1
    # float64 data, int64 indices and empty rows
    M = sp.random(60, 40, density=0.2, format="csr", random_state=3, dtype=np.float64)
    M.data = np.round(M.data * 10) + 1
    M[[5, 6, 59]] = 0
    M.eliminate_zeros()
    M.indices = M.indices.astype(np.int64)
    M.indptr = M.indptr.astype(np.int64)
    f = tmp_path / "f64.h5ad"
    ad.AnnData(M).write_h5ad(f)
    B = BackedCounts(f)
    r = B.row_reader()
    try:
        pick = np.array([0, 5, 6, 7, 30, 59])
        assert (B.take(pick, reader=r) != M[pick]).nnz == 0
        r.close()  # a read after close starts a new process
        assert (B.take(pick[::2].copy(), reader=r) != M[pick[::2]]).nnz == 0
    finally:
        r.close()


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_raw_range_reads_equal_hdf5_across_chunks(tmp_path, pbmc_file, compression):
    """Direct file reads of chunked data (ranges across chunk boundaries) equal HDF5's own;
    compressed data is left to HDF5, and the helper process reads both kinds alike."""
    import os

    import h5py

    from sctopic.data.rowreader import RawRanges, read_ranges

    _, a = pbmc_file
    X = sp.csr_matrix(a.X[:120], dtype=np.float32)
    f = tmp_path / f"chunked_{compression}.h5ad"
    with h5py.File(f, "w") as h:
        g = h.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": X.shape})
        kw = dict(chunks=(97,), compression=compression)  # rows straddle many chunk borders
        g.create_dataset("data", data=X.data, **kw)
        g.create_dataset("indices", data=X.indices, **kw)
        g.create_dataset("indptr", data=X.indptr)
    rng = np.random.default_rng(4)
    with h5py.File(f, "r") as h:
        fd = os.open(f, os.O_RDONLY)
        try:
            raw = RawRanges.open(fd, h["X/data"])
            assert (raw is None) == (compression is not None)
            if raw is not None:
                lens = rng.integers(0, 300, 40)  # disjoint ranges, as CSR rows are
                lens[::7] = 0
                starts = np.cumsum(rng.integers(0, 200, 40)) + np.cumsum(lens) - lens
                assert starts[-1] + lens[-1] <= X.nnz
                np.testing.assert_array_equal(raw.read(starts, lens), read_ranges(h["X/data"], starts, lens))
        finally:
            os.close(fd)
    B = BackedCounts(f)
    r = B.row_reader()
    try:
        pick = np.sort(rng.choice(120, 50, replace=False))
        assert (B.take(pick, reader=r) != X[pick]).nnz == 0
    finally:
        r.close()


def test_row_reader_process_failure_is_a_clear_error(pbmc_file):
    from sctopic.data.rowreader import RowReaderProcess

    path, _ = pbmc_file
    r = RowReaderProcess(path, "/no/such/matrix")
    with pytest.raises(RuntimeError, match="row-reader process for /no/such/matrix in .* failed: .+"):
        r.read(np.array([0, 1]))
    assert r._proc is None


def test_minibatches_cover_every_cell_once_and_rows_match(pbmc_file):
    path, a = pbmc_file
    X = sp.csr_matrix(a.X, dtype=np.float32)
    mb = BackedMinibatches(BackedCounts(path), "dense", torch.device("cpu"), block_size=64, pool_blocks=2)
    gen = torch.Generator().manual_seed(0)
    seen = []
    far = torch.tensor([0, 699, 350, 350])  # repeated, and mostly outside the current pool
    for idx in mb.batches(50, gen):
        assert 2 <= len(idx) <= 50
        seen.append(idx.numpy())
        got = mb.rows(idx).numpy()
        np.testing.assert_array_equal(got, X[idx.numpy()].toarray())
        mixed = torch.cat([idx[:5], far])
        np.testing.assert_array_equal(mb.rows(mixed).numpy(), X[mixed.numpy()].toarray())
    allidx = np.concatenate(seen)
    assert np.array_equal(np.sort(allidx), np.arange(a.n_obs))
    # Each minibatch draws from one pool: at most pool_blocks blocks of 64 consecutive cells.
    spans = [len(np.unique(mb.bounds.searchsorted(b, side="right"))) for b in seen]
    assert max(spans) <= 2
    # Same seed, same epoch; a CSR layout gives the same rows.
    again = list(BackedMinibatches(BackedCounts(path), "csr", torch.device("cpu"), block_size=64,
                                   pool_blocks=2).batches(50, torch.Generator().manual_seed(0)))
    assert all(torch.equal(x, y) for x, y in zip(again, [torch.as_tensor(s) for s in seen]))


def test_backed_gene_selection_matches_scanpy_seurat():
    from sctopic.data.counts import select_genes

    path = shared_file("pbmc3k_seurat_labels.h5ad")
    a = ad.read_h5ad(path)
    X = BackedCounts(path)
    stats = scan_counts(X)
    cols = select_genes_backed(stats, 2000)
    ref = select_genes(a, 2000)
    assert list(a.var_names[cols]) == list(ref.var_names)


def test_scan_rejects_normalised_values(tmp_path, pbmc_small):
    a = pbmc_small.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()).astype(np.float32))
    a.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(InputError, match="non-integer"):
        scan_counts(BackedCounts(tmp_path / "lognorm.h5ad"))


def test_backed_inference_validates_new_data(tmp_path, pbmc_small):
    import sctopic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = sctopic.SCETM(pbmc_small.copy(), n_topics=4, seed=0)
    m.train(max_epochs=1, progress=False, write_results=False)
    a = pbmc_small.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()).astype(np.float32))
    a.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(InputError, match="non-integer"):
        m.get_cell_topics(ad.read_h5ad(tmp_path / "lognorm.h5ad", backed="r"))


def test_backed_input_errors(tmp_path, pbmc_small):
    import sctopic

    with pytest.raises(InputError, match="not an in-memory AnnData"):
        sctopic.SCETM(pbmc_small, n_topics=5, backed=True)
    a = pbmc_small.copy()
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(InputError, match="CSC"):
        sctopic.SCETM(tmp_path / "csc.h5ad", n_topics=5, backed=True)
    with pytest.raises(InputError, match="layer 'nope' not found"):
        sctopic.SCETM(tmp_path / "csc.h5ad", n_topics=5, backed=True, layer="nope")


@pytest.mark.parametrize("cls", ["SCETM", "SCE2TM"])
def test_backed_model_matches_in_memory_setup_and_inference(cls, pbmc_file):
    import sctopic

    path, a = pbmc_file
    Model = getattr(sctopic, cls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = Model(a.copy(), n_topics=8, n_top_genes=300, seed=0)
        bk = Model(path, n_topics=8, n_top_genes=300, seed=0, backed=True)
    assert bk.genes == mem.genes
    assert np.array_equal(bk._train_cells, mem._train_cells)
    if cls == "SCE2TM":  # the out-of-core PCA equals the in-memory one up to signs
        for j in range(10):
            assert abs(np.corrcoef(bk._pca[:, j], mem._pca[:, j])[0, 1]) > 0.999
    bk.train(max_epochs=4, batch_size=128, progress=False, block_size=200, pool_blocks=2)
    # the reconstruction, not the total: SCE2TM's ECR term joins the loss part-way (its warm-up)
    h = bk.history_["reconstruction"]
    assert h[-1] < h[0]
    theta = bk.get_cell_topics()
    assert theta.shape == (a.n_obs, 8)
    np.testing.assert_allclose(theta.sum(1), 1.0, atol=1e-5)
    # The same trained weights give the same topics from memory.
    theta_mem = bk.get_cell_topics(a.copy())
    np.testing.assert_allclose(theta, theta_mem, atol=1e-6)
    assert f"X_{bk.model_name}" in bk.adata.obsm


def test_resolve_ahead_keeps_items_and_order():
    from sctopic.data.loader import resolve_ahead

    calls = []

    def make(i):
        def read():
            calls.append(i)
            return i * 10
        return read

    items = [(i, {"x": make(i), "v": i}) for i in range(4)]
    got = []
    for n, b in resolve_ahead(iter(items)):
        got.append((n, b["x"], b["v"]))
    assert got == [(i, i * 10, i) for i in range(4)]
    assert calls == [0, 1, 2, 3]


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_resolve_ahead_holds_depth_items_back(depth):
    from sctopic.data.loader import resolve_ahead

    generated = []

    def items():
        for i in range(6):
            generated.append(i)
            yield i, {"x": (lambda i=i: i * 10)}

    for n, b in resolve_ahead(items(), depth=depth):
        assert b["x"] == n * 10
        # when step n trains, the items of steps n+1..n+depth have been generated (their
        # reads started), and no more
        assert len(generated) == min(n + depth + 1, 6)
    with pytest.raises(ValueError, match="depth"):
        list(resolve_ahead(items(), depth=0))


@pytest.mark.parametrize("cls", ["SCETM", "SCE2TM"])
def test_backed_resume_is_bit_identical(cls, pbmc_file, tmp_path, monkeypatch):
    import sctopic
    from sctopic.train.checkpoint import Checkpointer

    class Crash(Exception):
        pass

    path, _ = pbmc_file
    kw = dict(n_topics=6, n_top_genes=200, seed=0, backed=True)
    tr = dict(max_epochs=4, batch_size=100, progress=False, block_size=150, pool_blocks=2,
              write_results=False)
    Model = getattr(sctopic, cls)
    full = Model(path, **kw).train(**tr)
    ck = tmp_path / "ck.pt"
    orig = Checkpointer.__call__

    def crash_after_2(self, epoch):
        orig(self, epoch)
        if epoch == 2:
            raise Crash

    monkeypatch.setattr(Checkpointer, "__call__", crash_after_2)
    with pytest.raises(Crash):
        Model(path, **kw).train(checkpoint_path=ck, checkpoint_every=1, **tr)
    monkeypatch.undo()
    resumed = Model(path, **kw).train(checkpoint_path=ck, resume=True, **tr)
    for (k, v), (_, w) in zip(full.module.state_dict().items(), resumed.module.state_dict().items()):
        assert torch.equal(v, w), k
    assert full.history_["loss"] == resumed.history_["loss"]


def test_cli_fit_backed_streams_result(pbmc_file, tmp_path):
    path, a = pbmc_file
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "sctopic", "-q", "fit", str(path), "--model", "scetm", "--backed",
         "--out", str(out), "--n-topics", "5", "--n-hvg", "250", "--max-epochs", "2"],
        capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    res = ad.read_h5ad(out / "result.h5ad")
    rep = json.loads((out / "train.json").read_text())
    assert res.n_vars == rep["n_genes"] == 250 and res.n_obs == a.n_obs
    assert res.obsm["X_scetm"].shape == (a.n_obs, 5)
    np.testing.assert_allclose(res.obsm["X_scetm"].sum(1), 1.0, atol=1e-5)
    ref = sp.csr_matrix(a.X)[:, a.var_names.get_indexer(res.var_names)]
    assert (sp.csr_matrix(res.X) != ref).nnz == 0
    assert (sp.csr_matrix(res.layers["counts"]) != ref).nnz == 0
    assert list(res.obs_names) == list(a.obs_names)
