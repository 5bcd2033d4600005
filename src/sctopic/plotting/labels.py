"""Text labels that do not pile up: greedy placement of point labels without overlaps, and
wrapping of long gene-set names.

No dependency beyond matplotlib: labels are tried in priority order at a few offsets around
their point and kept only where their box overlaps no label already placed, so the number of
labels drawn is bounded and every drawn label is legible.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

#: Offsets (points) tried around a point, in order: next to it (up-right, down-right, up-left,
#: down-left), then further out in tiers, where a thin leader line ties label and point.
NEAR = ((4, 3), (4, -3), (-4, 3), (-4, -3))
OFFSETS = NEAR + tuple((sx * dx, sy * dy) for dy in (14, 26, 38) for dx in (6, 18)
                       for sy in (1, -1) for sx in (1, -1))


def wrap_label(text: str, width: int = 28, max_lines: int = 2) -> str:
    """Wrap ``text`` to ``width`` characters per line, at most ``max_lines`` lines (an
    ellipsis marks what was cut)."""
    lines = textwrap.wrap(str(text), width=width, break_long_words=True) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, width - 1)].rstrip() + "…"
    return "\n".join(lines)


def place_labels(
    ax,
    x: Sequence[float],
    y: Sequence[float],
    texts: Sequence[str],
    *,
    max_labels: int = 20,
    fontsize: float = 6.5,
    avoid: list | None = None,
    **text_kw,
) -> list:
    """Write ``texts`` next to the points ``(x, y)`` in the given (priority) order, skipping
    any label that would overlap one already placed or leave the axes.

    Parameters
    ----------
    ax
        Matplotlib axes (its figure's layout is fixed by one draw before placing).
    x, y
        Point coordinates in data units, highest priority first.
    texts
        Label of each point.
    max_labels
        At most this many labels are drawn.
    fontsize
        Font size in points.
    avoid
        Display-space bounding boxes (``matplotlib.transforms.Bbox``) to keep clear of, e.g. the
        labels of an earlier call; extended in place with the boxes placed here.
    text_kw
        Passed to :meth:`~matplotlib.axes.Axes.annotate` (colour, weight...).

    Returns
    -------
    list of matplotlib.text.Annotation
        The labels drawn (at most ``max_labels``).
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # fix the constrained layout, so display coordinates are final
    renderer = fig.canvas.get_renderer()
    ax.set_xlim(ax.get_xlim())  # freeze autoscaling: the labels' positions must stay where tested
    ax.set_ylim(ax.get_ylim())
    frame = ax.get_window_extent(renderer)
    px = fig.dpi / 72.0
    placed = avoid if avoid is not None else []
    out = []
    probe = ax.text(0, 0, "", fontsize=fontsize, **{k: v for k, v in text_kw.items() if k in ("fontweight",)})
    tried = 0
    for xi, yi, t in zip(x, y, texts):
        if len(out) >= max_labels or tried >= 20 * max(max_labels, 1):  # bounded work on huge piles
            break
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        tried += 1
        probe.set_text(str(t))
        ext = probe.get_window_extent(renderer)  # the label's size; its position is computed below
        w, h = ext.width, ext.height
        px0, py0 = ax.transData.transform((xi, yi))
        for dx, dy in OFFSETS:
            ox, oy = px0 + dx * px, py0 + dy * px
            x0 = ox if dx > 0 else ox - w
            y0 = oy if dy > 0 else oy - h
            box = Bbox.from_bounds(x0, y0, w, h)
            inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1)
            if not inside or any(box.padded(2).overlaps(b) for b in placed):  # a little air between labels
                continue
            leader = {} if (dx, dy) in NEAR else {
                "arrowprops": {"arrowstyle": "-", "lw": 0.4, "color": "0.45", "shrinkA": 0, "shrinkB": 2}}
            ann = ax.annotate(str(t), (xi, yi), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                              annotation_clip=True, **leader, **text_kw)
            ann.set_in_layout(False)  # labels must not resize the axes after placement
            placed.append(box.padded(2))
            out.append(ann)
            break
    probe.remove()
    return out


def count_labels(fig) -> int:
    """Number of non-empty text artists drawn inside the axes of ``fig`` (tick labels, titles
    and legends excluded): what a reader sees as point labels."""
    n = 0
    for ax in fig.axes:
        n += sum(1 for t in ax.texts if t.get_visible() and t.get_text().strip())
    return n


def overlapping_labels(fig) -> int:
    """Number of pairs of point labels (as :func:`count_labels` counts them) whose boxes overlap
    once ``fig`` is drawn: 0 for a readable figure."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    from matplotlib.text import Text

    # Text's own extent: an Annotation's would include its leader line, which may cross labels.
    boxes = [Text.get_window_extent(t, r) for ax in fig.axes for t in ax.texts
             if t.get_visible() and t.get_text().strip()]
    return sum(1 for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j]))
