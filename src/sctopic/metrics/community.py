"""Community detection (Leiden, Louvain) on a weighted cell graph, seeded.

All variants optimise modularity with a resolution parameter (the RB-configuration
model), so a resolution means the same for each:

* Leiden, ``backend="igraph"`` (default): igraph's C implementation,
  ``Graph.community_leiden(objective_function="modularity", resolution=...)``.  About 15x
  faster than leidenalg on 50k cells (1 s vs 14 s per resolution on 2 cores).
* Leiden, ``backend="leidenalg"``: :class:`leidenalg.RBConfigurationVertexPartition`
  optimised by leidenalg (what scanpy's ``tl.leiden`` uses), seeded by its optimiser.
* Louvain: igraph's ``community_multilevel(weights, resolution)``.  (leidenalg's optimiser
  with ``refine_partition=False`` would also be Louvain, but it crashes in leidenalg 0.12.)

igraph draws random numbers from a Python RNG; we swap in ``random.Random(seed)`` for the
call (and restore the previous generator), which makes the igraph paths reproducible.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Literal

import numpy as np
import scipy.sparse as sp

Method = Literal["leiden", "louvain"]
Backend = Literal["igraph", "leidenalg"]


def to_igraph(graph: sp.spmatrix):
    """Undirected weighted igraph Graph from a symmetric sparse adjacency matrix."""
    import igraph as ig

    g = sp.triu(sp.csr_matrix(graph), k=1).tocoo()
    out = ig.Graph(n=graph.shape[0], edges=np.column_stack([g.row, g.col]), directed=False)
    out.es["weight"] = g.data.astype(float)
    return out


@contextmanager
def _igraph_seed(seed: int):
    """Run igraph's random choices from ``random.Random(seed)``, then restore its RNG."""
    import igraph as ig

    previous = random  # igraph's default generator: the random module itself
    ig.set_random_number_generator(random.Random(int(seed)))
    try:
        yield
    finally:
        ig.set_random_number_generator(previous)


def _relabel_by_size(membership) -> np.ndarray:
    """Community labels 0..C-1 ordered by decreasing size (ties: first appearance)."""
    m = np.asarray(membership, dtype=np.int64)
    _, first, inv, counts = np.unique(m, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv]


def cluster_graph(
    graph,
    resolution: float = 1.0,
    *,
    method: Method = "leiden",
    seed: int = 0,
    n_iterations: int = 2,
    backend: Backend = "igraph",
) -> np.ndarray:
    """Partition a graph into communities.

    Parameters
    ----------
    graph
        An :class:`igraph.Graph` with a ``"weight"`` edge attribute (see :func:`to_igraph`)
        or a symmetric sparse adjacency matrix.
    resolution
        Modularity resolution (higher -> more, smaller clusters).
    method
        ``"leiden"`` or ``"louvain"``.
    seed
        Seed of the random choices of the algorithm.
    n_iterations
        Leiden optimiser passes (default 2, as leidenalg and scanpy's igraph flavour);
        negative repeats until the partition stops improving (2-10x slower on 50k cells for
        the same ARI).  Ignored by Louvain, which always runs to convergence.
    backend
        Leiden implementation: ``"igraph"`` (default, fast) or ``"leidenalg"``.

    Returns
    -------
    numpy.ndarray
        Integer community label per cell, 0 = largest community.
    """
    if sp.issparse(graph):
        graph = to_igraph(graph)
    if method == "leiden" and backend == "leidenalg":
        import leidenalg as la

        part = la.RBConfigurationVertexPartition(
            graph, weights="weight", resolution_parameter=float(resolution)
        )
        opt = la.Optimiser()
        opt.set_rng_seed(int(seed))
        if n_iterations < 0:
            while opt.optimise_partition(part) > 0:
                pass
        else:
            for _ in range(n_iterations):
                opt.optimise_partition(part)
        membership = part.membership
    elif method == "leiden" and backend == "igraph":
        with _igraph_seed(seed):
            membership = graph.community_leiden(
                objective_function="modularity", weights="weight",
                resolution=float(resolution), n_iterations=int(n_iterations),
            ).membership
    elif method == "louvain":
        with _igraph_seed(seed):
            membership = graph.community_multilevel(
                weights="weight", resolution=float(resolution)
            ).membership
    elif method == "leiden":
        raise ValueError(f"backend must be 'igraph' or 'leidenalg', got {backend!r}")
    else:
        raise ValueError(f"method must be 'leiden' or 'louvain', got {method!r}")
    return _relabel_by_size(membership)
