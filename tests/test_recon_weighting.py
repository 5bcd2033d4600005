"""Per-cell weighting of SCE2TM's reconstruction (``recon_weighting``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sctopic.errors import InputError
from sctopic.nn.sce2tm import SCE2TMModule


def _counts() -> torch.Tensor:
    rng = np.random.default_rng(0)
    depth = rng.choice([1.0, 8.0], size=(50, 1))  # shallow and deep cells
    return torch.tensor(rng.poisson(depth * rng.gamma(1.0, 1.0, (50, 40))), dtype=torch.float32)


def _plain_nll(m: SCE2TMModule, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # independent reference: log-softmax of the decoder's logits, summed against the counts
    logp = torch.log_softmax(m.decoder.logits(theta, m.decoder.beta(m.decoder.cost())), dim=1)
    return -(x * logp).sum(1)


@pytest.mark.parametrize("weighting", ["count", "cell"])
def test_reconstruction_matches_a_plain_weighted_nll(weighting):
    x = _counts()
    x[0] = 0.0  # an empty row: its weight must stay finite
    torch.manual_seed(0)
    m = SCE2TMModule(n_genes=40, n_topics=6, cross_view=False, recon_weighting=weighting, mean_library=37.0)
    m.eval()
    post = m.inference(x)
    got = m.loss(x, post)["reconstruction"]
    nll = _plain_nll(m, x, post["theta"])
    if weighting == "cell":
        nll = nll * 37.0 / x.sum(1).clamp_min(1.0)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, nll.mean(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("weighting", ["count", "cell"])
def test_heldout_reconstruction_uses_the_same_weighting(weighting):
    # early stopping's held-out score is the per-cell value whose mean the loss reports
    x = _counts()
    torch.manual_seed(0)
    m = SCE2TMModule(n_genes=40, n_topics=6, cross_view=False, recon_weighting=weighting, mean_library=5.0)
    m.eval()
    with torch.no_grad():
        per_cell = m.reconstruction_nll(x)
        reported = m.loss(x, m.inference(x))["reconstruction"]
    torch.testing.assert_close(per_cell.mean(), reported)


def test_cell_weighting_equalises_shallow_and_deep_cells():
    x = _counts()
    torch.manual_seed(0)
    m = SCE2TMModule(n_genes=40, n_topics=6, cross_view=False, recon_weighting="cell", mean_library=1.0)
    m.eval()
    with torch.no_grad():
        post = m.inference(x)
    per_cell = _plain_nll(m, x, post["theta"]) / x.sum(1).clamp_min(1.0)
    lib = x.sum(1)
    deep, shallow = per_cell[lib > lib.median()], per_cell[(lib <= lib.median()) & (lib > 0)]
    # per count, deep and shallow cells are on one scale (the unweighted NLL differs ~8x)
    assert float(deep.mean() / shallow.mean()) < 2.0
    raw = _plain_nll(m, x, post["theta"])
    assert float(raw[lib > lib.median()].mean() / raw[(lib <= lib.median()) & (lib > 0)].mean()) > 3.0


def test_recon_weighting_is_checked_and_saved(tmp_path):
    import sctopic

    adata = sctopic.datasets.pbmc68k_reduced()
    with pytest.raises(InputError, match="recon_weighting"):
        sctopic.SCE2TM(adata, n_topics=5, recon_weighting="gene")
    with pytest.raises(ValueError, match="recon_weighting"):
        SCE2TMModule(n_genes=5, n_topics=2, cross_view=False, recon_weighting="gene")
    m = sctopic.SCE2TM(adata, n_topics=5, recon_weighting="cell", n_top_genes=None)
    assert m.module.recon_weighting == "cell"
    assert m.module.mean_library == pytest.approx(float(np.asarray(adata.X.sum(1)).mean()), rel=1e-4)
    m.train(max_epochs=1, progress=False)
    m.save(tmp_path / "m.pt")
    back = sctopic.SCE2TM.load(tmp_path / "m.pt", adata=adata)
    assert back.module.recon_weighting == "cell" and back.module.mean_library == m.module.mean_library
    assert sctopic.SCE2TM(adata, n_topics=5, n_top_genes=None).module.recon_weighting == "cell"  # the default
    assert sctopic.SCE2TM(adata, n_topics=5, n_top_genes=None, preset="paper").module.recon_weighting == "count"
