"""Binomial depth thinning of the encoder's input (SCE2TM ``depth_augment``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sctopic.errors import InputError
from sctopic.nn.sce2tm import SCE2TMModule, thin_counts


def _counts(seed: int = 0) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).poisson(3.0, (400, 60)), dtype=torch.float32)


def test_thinning_keeps_a_uniform_fraction_of_each_cells_molecules():
    x = _counts()
    torch.manual_seed(0)
    t = thin_counts(x, 0.2)
    assert torch.all(t <= x) and torch.all(t >= 0) and torch.equal(t, t.round())
    kept = t.sum(1) / x.sum(1)
    # per cell ~ U(0.2, 1) (plus binomial noise): mean 0.6, spread over the whole range
    assert abs(float(kept.mean()) - 0.6) < 0.05
    assert float(kept.min()) < 0.3 and float(kept.max()) > 0.9
    assert torch.all(t[x == 0] == 0)  # no molecule appears


def test_sparse_and_dense_thinning_agree_in_law():
    x = _counts(1)
    torch.manual_seed(1)
    dense = thin_counts(x, 0.5)
    torch.manual_seed(1)
    sparse = thin_counts(x.to_sparse_csr(), 0.5)
    assert sparse.layout == torch.sparse_csr
    sd = sparse.to_dense()
    assert torch.all(sd <= x) and torch.all(sd[x == 0] == 0)
    # same expected fraction kept (the draws differ: sparse draws only the non-zeros)
    assert abs(float(sd.sum() / x.sum()) - float(dense.sum() / x.sum())) < 0.05


def test_encoder_input_is_thinned_only_while_training():
    m = SCE2TMModule(n_genes=60, n_topics=5, n_external=0, cross_view=False, depth_augment=0.3)
    x = _counts(2)
    m.eval()
    assert torch.equal(m.encoder_in(x), x)
    m.train()
    torch.manual_seed(0)
    assert float(m.encoder_in(x).sum()) < 0.9 * float(x.sum())
    off = SCE2TMModule(n_genes=60, n_topics=5, n_external=0, cross_view=False)
    off.train()
    assert torch.equal(off.encoder_in(x), x)


def test_depth_augment_is_checked_and_saved(tmp_path):
    import sctopic

    adata = sctopic.datasets.pbmc68k_reduced()
    with pytest.raises(InputError, match="depth_augment"):
        sctopic.SCE2TM(adata, n_topics=5, depth_augment=1.5)
    m = sctopic.SCE2TM(adata, n_topics=5, depth_augment=0.25, n_top_genes=None)
    m.train(max_epochs=1, progress=False)
    m.save(tmp_path / "m.pt")
    again = sctopic.load_model(tmp_path / "m.pt", adata=adata)
    assert again.module.depth_augment == 0.25


def test_thinned_counts_follow_the_binomial_law():
    """Every entry of a constant-count matrix with one p per row: the kept counts of a row
    are Binomial(n, p) draws (chi-square against scipy's pmf), for dense and CSR input."""
    from scipy import stats

    n, rows, cols = 6, 8, 5000
    x = torch.full((rows, cols), float(n))
    for layout in ("dense", "csr"):
        torch.manual_seed(7)
        t = thin_counts(x if layout == "dense" else x.to_sparse_csr(), 0.2)
        t = t.to_dense() if layout == "csr" else t
        torch.manual_seed(7)
        p = torch.empty(rows).uniform_(0.2, 1.0)  # the fractions thin_counts drew first
        for r in range(rows):
            obs = np.bincount(t[r].long().numpy(), minlength=n + 1).astype(float)
            exp = stats.binom.pmf(np.arange(n + 1), n, float(p[r])) * cols
            ok = exp >= 5
            o, e = np.append(obs[ok], obs[~ok].sum()), np.append(exp[ok], exp[~ok].sum())
            assert stats.chisquare(o[e > 0], e[e > 0]).pvalue > 1e-4, (layout, r)
