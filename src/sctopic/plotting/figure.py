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


def finish(fig, *, path=None, save=None, show: bool | None = None):
    """The common end of every plotting function, scanpy-style.

    Saves to ``save`` (or the older ``path``), displays the figure when ``show`` is true (in
    IPython/Jupyter; a no-op elsewhere, as no GUI backend is used), and returns the figure unless
    ``show`` is true (then ``None``, as ``scanpy.pl`` does).
    """
    target = save if save is not None else path
    if save is not None and path is not None and Path(save) != Path(path):
        from sctopic.errors import InputError

        raise InputError("pass either save= or path= (the same thing), not both.")
    save_figure(fig, target)
    if show:
        try:
            from IPython.display import display

            display(fig)
        except ImportError:  # pragma: no cover - plain Python: nothing to show on
            pass
        return None
    return fig
