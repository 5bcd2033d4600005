"""External views: GO knowledge view, resolve_view specs, Geneformer adapter, ``sctopic embed``."""
from __future__ import annotations

import json
import os
import pickle
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from sctopic.errors import InputError
from sctopic.external import ExternalView, go_embed, go_gene_vectors, resolve_view
from sctopic.external.common import read_dict_file


@pytest.fixture(scope="module")
def cells(pbmc_small):
    a = pbmc_small[:80].copy()
    return a[:, np.asarray(a.X.sum(0)).ravel() > 0].copy()


# ------------------------------------------------------------------------------ GO view
def test_go_view_shape_determinism_and_coverage(cells):
    emb, info = go_embed(cells, return_info=True)
    assert emb.shape == (cells.n_obs, 50) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, go_embed(cells))
    assert info["library"] == "go_bp_human"
    assert 0.6 < info["gene_coverage"] < 0.95  # most PBMC marker genes have GO annotation
    # a cell is a weighted mean of unit gene vectors: norm at most 1, and not all alike
    norms = np.linalg.norm(emb, axis=1)
    assert np.all(norms <= 1.0 + 1e-5) and np.all(norms > 0.1)
    assert np.corrcoef(emb)[np.triu_indices(cells.n_obs, 1)].min() < 0.99


def test_go_view_is_expression_weighted_mean(cells):
    G, found, _ = go_gene_vectors(list(cells.var_names))
    np.testing.assert_allclose(np.linalg.norm(G[found], axis=1), 1.0, atol=1e-5)
    assert not G[~found].any()
    x = cells.X[3].toarray().ravel().astype(np.float64)
    w = np.log1p(x / x.sum() * 1e4) * found
    np.testing.assert_allclose(go_embed(cells)[3], w @ G / w.sum(), atol=1e-5)


def test_go_view_cells_without_annotated_genes_get_zeros(cells):
    a = cells[:5].copy()
    G, found, _ = go_gene_vectors(list(a.var_names))
    X = a.X.toarray()
    X[2] = 0
    X[2, np.flatnonzero(~found)[0]] = 7  # only an unannotated gene
    a.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="no GO-annotated gene"):
        emb = go_embed(a)
    assert not emb[2].any() and emb[0].any()


def test_go_view_guards(cells):
    ens = cells.copy()
    ens.var_names = [f"ENSG{i:011d}" for i in range(ens.n_vars)]
    with pytest.raises(InputError, match="ensembl"):
        go_embed(ens)
    mouse = cells.copy()
    mouse.var_names = [g.capitalize() for g in cells.var_names]
    _, info = go_embed(mouse, return_info=True)
    assert info["library"] == "go_bp_mouse"
    logn = cells.copy()
    logn.X = logn.X.astype(np.float32) * 0.37  # not counts
    with pytest.raises(InputError, match="non-integer"):
        go_embed(logn)


# ------------------------------------------------------------------------------ resolve_view
def test_resolve_view_accepts_go_and_rejects_unknown(cells):
    from sctopic.data.counts import get_counts

    X = get_counts(cells)
    v = resolve_view(cells, "go", X)
    assert isinstance(v, ExternalView) and v.name == "go" and not v.builtin
    assert v.info["gene_coverage"] > 0.5
    np.testing.assert_array_equal(v.matrix, go_embed(cells))
    assert resolve_view(cells, "random", X).builtin
    with pytest.raises(InputError, match="scgpt:DIR"):
        resolve_view(cells, "X_nothing", X)
    with pytest.raises(InputError, match="model folder"):
        resolve_view(cells, "scgpt:", X)
    with pytest.raises(InputError, match="not found"):
        resolve_view(cells, "scgpt:/no/such/dir", X)


def test_resolve_view_scgpt_spec(cells, tmp_path):
    from test_scgpt import _tiny_checkpoint, _write_real_format

    from sctopic.data.counts import get_counts
    from sctopic.external import scgpt_embed

    ck = _tiny_checkpoint(list(cells.var_names)[::2])
    _write_real_format(ck, tmp_path)
    v = resolve_view(cells, f"scgpt:{tmp_path}", get_counts(cells), seed=2)
    assert v.matrix.shape == (cells.n_obs, 16) and not v.builtin
    assert v.info["ignored_tensors"] == 4
    np.testing.assert_array_equal(v.matrix, scgpt_embed(cells, tmp_path, seed=2, progress=False))


def test_data_only_unpickler(tmp_path):
    good = tmp_path / "d.pkl"
    good.write_bytes(pickle.dumps({"ENSG1": np.float64(2.5), "<pad>": 0}))
    assert read_dict_file(good, "d") == {"ENSG1": 2.5, "<pad>": 0}
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "e.pkl"
    bad.write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(InputError, match="refusing"):
        read_dict_file(bad, "d")
    assert not marker.exists()


# ------------------------------------------------------------------------------ Geneformer
N_SPECIAL = 2


@pytest.fixture(scope="module")
def gf(cells, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    d = tmp_path_factory.mktemp("geneformer")
    a = cells.copy()
    a.var["gene_id"] = [f"ENSG{i:011d}.3" for i in range(a.n_vars)]
    rng = np.random.default_rng(0)
    keep = sorted(rng.choice(a.n_vars, int(0.9 * a.n_vars), replace=False))
    tok = {"<pad>": 0, "<mask>": 1}
    tok.update({f"ENSG{i:011d}": N_SPECIAL + j for j, i in enumerate(keep)})
    med = {f"ENSG{i:011d}": float(rng.uniform(0.5, 3.0)) for i in keep}
    cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(cfg).eval()
    model.save_pretrained(d)
    (d / "token_dictionary_gc_test.pkl").write_bytes(pickle.dumps(tok))
    (d / "gene_median_dictionary_gc_test.json").write_text(json.dumps(med))
    return a, d, model, tok, med


def test_geneformer_shape_determinism_and_reference(gf):
    import torch

    from sctopic.external import geneformer_embed

    a, d, model, tok, med = gf
    emb, info = geneformer_embed(a, d, progress=False, batch_size=16, return_info=True)
    assert emb.shape == (a.n_obs, 16)
    assert 0.89 < info["gene_coverage"] < 0.91 and info["ignored_tensors"] > 0
    assert info["cells_truncated"] > 0  # cells express more genes than the 64 positions
    np.testing.assert_array_equal(emb, geneformer_embed(a, d, progress=False, batch_size=5))
    view = resolve_view(a, f"geneformer:{d}", None)  # dictionaries found beside the model
    assert view.name == f"geneformer:{d}" and view.info["special_tokens"] is False
    np.testing.assert_allclose(view.matrix, emb, atol=1e-6)
    # the rank-value encoding and pooling recomputed by hand for two cells
    X = a.X.toarray().astype(np.float64)
    ids = [g.split(".")[0] for g in a.var["gene_id"]]
    for i in (0, 9):
        js = [j for j in range(a.n_vars) if X[i, j] > 0 and ids[j] in tok]
        val = np.array([X[i, j] / X[i].sum() * 1e4 / med[ids[j]] for j in js])
        order = np.argsort(-val, kind="stable")[:64]
        toks = torch.tensor([[tok[ids[js[o]]] for o in order]])
        with torch.no_grad():
            h = model.bert(input_ids=toks, output_hidden_states=True).hidden_states[-1][0].mean(0)
        np.testing.assert_allclose(emb[i], h.numpy(), atol=1e-5)


def test_geneformer_guards(gf, tmp_path, monkeypatch):
    import shutil

    import transformers

    from sctopic.external import geneformer_embed

    a, d, *_ = gf
    sym = a.copy()
    del sym.var["gene_id"]
    with pytest.raises(InputError, match="Ensembl"):
        geneformer_embed(sym, d, progress=False)
    # weights that do not match config.json
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="does not match|could not load"):
        geneformer_embed(a, bad, progress=False)
    # a token dictionary from another model
    big = {k: v + 1000 for k, v in pickle.loads((d / "token_dictionary_gc_test.pkl").read_bytes()).items()}
    with pytest.raises(InputError, match="does not belong"):
        geneformer_embed(a, d, token_dictionary=big, progress=False)
    assert transformers  # installed here; now pretend it is not
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(InputError, match=r"sctopic\[geneformer\]"):
        geneformer_embed(a, d, progress=False)


# ------------------------------------------------------------------------------ sctopic embed
def _h5ad(adata, path):
    adata.write_h5ad(path)
    return str(path)


def test_embed_command_go_and_scgpt(cells, tmp_path, capsys):
    from test_scgpt import _tiny_checkpoint, _write_real_format

    from sctopic.cli import main

    src = _h5ad(cells, tmp_path / "in.h5ad")
    out = tmp_path / "out.h5ad"
    assert main(["-q", "embed", src, "--external", "go", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gene coverage" in printed and str(out) in printed
    res = ad.read_h5ad(out)
    np.testing.assert_array_equal(res.obsm["X_go"], go_embed(cells))
    assert json.loads(res.uns["sctopic_views"]["X_go"])["library"] == "go_bp_human"

    ck_dir = tmp_path / "ck"
    _write_real_format(_tiny_checkpoint(list(cells.var_names)), ck_dir)
    out2 = tmp_path / "out2.h5ad"
    assert main(["-q", "embed", str(out), "--external", f"scgpt:{ck_dir}", "--key", "X_sc",
                 "--out", str(out2)]) == 0
    res2 = ad.read_h5ad(out2)
    assert res2.obsm["X_sc"].shape == (cells.n_obs, 16) and "X_go" in res2.obsm  # both kept


def test_embed_command_errors(cells, tmp_path, capsys):
    from sctopic.cli import main

    src = tmp_path / "in.h5ad"
    _h5ad(cells, src)
    before = src.read_bytes()
    assert main(["embed", str(src), "--external", "go", "--out", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sctopic embed: error:") and "input file" in err and "\n" not in err
    assert src.read_bytes() == before
    scaled = cells.copy()
    scaled.X = scaled.X.toarray().astype(np.float32) - 0.5  # centred data
    bad = _h5ad(scaled, tmp_path / "scaled.h5ad")
    assert main(["embed", bad, "--external", "go", "--out", str(tmp_path / "o.h5ad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "negative" in err and "\n" not in err
    assert not (tmp_path / "o.h5ad").exists()
    assert main(["embed", str(src), "--external", "bert", "--out", str(tmp_path / "o.h5ad")]) == 2
    assert "unknown view" in capsys.readouterr().err


def test_geneformer_v2_special_tokens(gf):
    import torch

    from sctopic.external import geneformer_embed

    a, d, model, tok, med = gf
    tok2 = {**tok, "<cls>": 1, "<eos>": 1}  # reuse an existing id: the model's vocabulary is fixed
    emb = geneformer_embed(a[:3], d, token_dictionary=tok2, progress=False)
    X = a.X.toarray().astype(np.float64)
    ids = [g.split(".")[0] for g in a.var["gene_id"]]
    js = [j for j in range(a.n_vars) if X[0, j] > 0 and ids[j] in tok]
    val = np.array([X[0, j] / X[0].sum() * 1e4 / med[ids[j]] for j in js])
    order = np.argsort(-val, kind="stable")[:62]  # 64 positions minus <cls> and <eos>
    toks = torch.tensor([[1] + [tok[ids[js[o]]] for o in order] + [1]])
    with torch.no_grad():
        h = model.bert(input_ids=toks, output_hidden_states=True).hidden_states[-1][0, 1:-1].mean(0)
    np.testing.assert_allclose(emb[0], h.numpy(), atol=1e-5)
