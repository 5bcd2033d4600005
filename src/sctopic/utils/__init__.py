"""Low-level helpers that every layer may use: torch/numpy only, nothing else of sctopic.

* :mod:`sctopic.utils.sparse`: building, slicing, transposing and summing torch sparse CSR
  tensors (``csr_tensor``, ``dense_to_csr``, ``csr_head``, ``csr_transpose``, ``csr_row_ids``,
  ``csr_row_sums``, ``row_sums``);
* :mod:`sctopic.utils.random`: :func:`~sctopic.utils.random.seeded`, a block with torch's
  generators seeded and the caller's random state restored afterwards;
* :mod:`sctopic.utils.device`: :func:`~sctopic.utils.device.resolve_device`.

Its modules import no other part of the package than :mod:`sctopic.errors`, so that ``data``,
``external``, ``nn`` and ``models`` can all build on them without import cycles. The package
itself imports nothing (``import sctopic.utils`` does not load torch).
"""
