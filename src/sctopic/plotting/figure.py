"""Figures without pyplot's global state: a ``Figure`` on the Agg canvas, saved atomically."""
from __future__ import annotations

import os
from pathlib import Path


def new_figure(width: float = 5.0, height: float = 4.0):
    """A matplotlib ``Figure`` attached to an Agg canvas (no pyplot, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: "str | os.PathLike | None", dpi: int = 150):
    """Save ``fig`` to ``path`` (format from the suffix; written atomically); returns ``fig``."""
    if path is None:
        return fig
    from sctopic.data.io import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    return fig
