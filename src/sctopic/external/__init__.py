"""External cell views for the Cross-view Encoder.

A *view* is a ``(n_cells, d)`` matrix describing each cell independently of the topic encoder:
the paper uses scGPT's 512-d cell embedding. See :func:`resolve_view` for what may be passed.
"""
from sctopic.external.views import BUILTIN_VIEWS, ExternalView, resolve_view

__all__ = ["BUILTIN_VIEWS", "ExternalView", "resolve_view"]
