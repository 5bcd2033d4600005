"""SCE2TM ``cve_neighbours``: minibatches with or without each anchor's sampled graph neighbour."""
from __future__ import annotations

import numpy as np
import pytest

import sctopic
from sctopic.errors import InputError


def _encoder_rows(model) -> list[int]:
    """Rows of every training batch the encoder sees (a hook on its last batch norm)."""
    rows: list[int] = []

    def hook(mod, args, out):
        if mod.training:
            rows.append(int(out.shape[0]))

    model.module.encoder.mu_bn.register_forward_hook(hook)
    return rows


@pytest.mark.parametrize("with_neighbours", [True, False])
def test_relational_cve_trains_with_or_without_neighbour_rows(with_neighbours):
    adata = sctopic.datasets.pbmc68k_reduced()
    m = sctopic.SCE2TM(adata, n_topics=5, n_top_genes=None, cve_neighbours=with_neighbours)
    assert m.init_params["cve_loss"] == "relational" and m.init_params["cve_neighbours"] is with_neighbours
    rows = _encoder_rows(m)
    m.train(max_epochs=2, batch_size=128, progress=False)
    # 700 cells in batches of 128: the anchors alone (128), or anchors + their neighbours (256)
    assert max(rows) == (256 if with_neighbours else 128) and len(rows) >= 2
    # the mutual kNN graphs are built only when neighbours are sampled
    assert bool(m.graph_stats_) is with_neighbours
    assert np.all(np.isfinite(m.history["loss"].to_numpy()))
    assert np.all(np.isfinite(m.get_latent_representation()))


def test_cve_neighbours_is_checked():
    adata = sctopic.datasets.pbmc68k_reduced()
    with pytest.raises(InputError, match="cve_neighbours=True"):
        sctopic.SCE2TM(adata, n_topics=5, preset="paper", cve_neighbours=False)
    with pytest.raises(InputError, match="cve_neighbours must be True or False"):
        sctopic.SCE2TM(adata, n_topics=5, cve_neighbours="no")
    # without the CVE there are no neighbours to drop: accepted
    sctopic.SCE2TM(adata, n_topics=5, cross_view=False, cve_neighbours=False)


@pytest.mark.parametrize("kwargs, expected", [
    ({}, False),                                           # the default recipe: no neighbour rows
    ({"preset": "paper"}, True),                           # the paper's cluster loss reads them
    ({"cve_loss": "cluster"}, True),                       # a neighbour-reading loss always gets them
    ({"cve_loss": "neighbour"}, True),
    ({"preset": "paper", "cve_loss": "relational"}, True),  # the paper preset keeps its batches
])
def test_cve_neighbours_none_takes_the_preset_and_the_loss(kwargs, expected):
    adata = sctopic.datasets.pbmc68k_reduced()
    m = sctopic.SCE2TM(adata, n_topics=5, n_top_genes=None, **kwargs)
    assert m.init_params["cve_neighbours"] is expected
