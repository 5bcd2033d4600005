"""External cell views for the Cross-view Encoder.

A *view* is a ``(n_cells, d)`` matrix describing each cell independently of the topic encoder:
the paper uses scGPT's 512-d cell embedding. See :func:`resolve_view` (and the documentation of
:mod:`sctopic.external.views`) for what may be passed and what each view brings.

* :func:`scgpt_embed` -- scGPT cell embeddings from a local checkpoint folder (pure torch);
  :func:`load_scgpt` loads and checks the checkpoint.
* :func:`geneformer_embed` -- Geneformer cell embeddings (optional extra ``transformers``).
* :func:`go_embed` -- the gene-ontology knowledge view; :func:`go_gene_vectors` its gene vectors.

The adapters are imported on first use, so ``import sctopic.external`` does not load torch.
"""
from sctopic.external.views import (
    BUILTIN_VIEWS,
    KNOWLEDGE_VIEWS,
    MODEL_PREFIXES,
    ExternalView,
    parse_view_spec,
    resolve_view,
)

_LAZY = {
    "scgpt_embed": "sctopic.external.scgpt",
    "load_scgpt": "sctopic.external.scgpt",
    "ScGPTCheckpoint": "sctopic.external.scgpt",
    "ScGPTConfig": "sctopic.external.scgpt",
    "geneformer_embed": "sctopic.external.geneformer",
    "go_embed": "sctopic.external.go",
    "go_gene_vectors": "sctopic.external.go",
}

__all__ = [
    "BUILTIN_VIEWS", "KNOWLEDGE_VIEWS", "MODEL_PREFIXES", "ExternalView", "parse_view_spec",
    "resolve_view", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sctopic.external' has no attribute {name!r}")
