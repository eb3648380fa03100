"""Plots: matplotlib figures for dynamics and embedding-space maps.

Imported only by commands that draw (never on the scan path). Every figure is
saved atomically as PNG through :func:`save_figure`.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from .fileio import atomic_path  # noqa: E402

DPI = 130


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically, close it, and return the path.

    >>> fig, ax = plt.subplots(); ax.plot([0, 1]); save_figure(fig, "line.png")
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
