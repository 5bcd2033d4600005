"""sctopic: interpretable single-cell embedded topic models.

The heavy, torch-based model classes are imported lazily so that the evaluation code
(``sctopic.metrics``, ``sctopic.genesets``) can be used without importing torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SCE2TM": "sctopic.models.sce2tm",
    "SCETM": "sctopic.models.scetm",
    "load_model": "sctopic.models.transfer",
    "transfer": "sctopic.models.transfer",
}
_SUBMODULES = {
    "data", "external", "nn", "models", "train", "genesets", "metrics",
    "analysis", "plotting", "bench", "datasets", "tl", "utils",
}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __dir__() -> list[str]:
    # The lazily imported names too, so tab completion offers SCE2TM, SCETM, transfer...
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return import_module(f"sctopic.{name}")
    raise AttributeError(f"module 'sctopic' has no attribute {name!r}")
