"""PNG plots, drawn on matplotlib figures without pyplot (no global backend state is touched)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from abcrown_plugins.fileio import atomic_write_bytes

__all__ = ["new_figure", "plot_xy", "save_figure"]


def new_figure(figsize: tuple[float, float] = (6, 4), dpi: int = 120, ncols: int = 1) -> tuple[Figure, Any]:
    """A figure with ``ncols`` axes side by side: ``(fig, ax)`` (``ax`` an array when ``ncols > 1``)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(ncols=ncols)


def plot_xy(path: str | Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
            ylabel: str, title: str, invert_x: bool = False, percent_axes: bool = True) -> None:
    """Line plot of named (x, y) series with markers, written atomically as PNG."""
    fig, ax = new_figure()
    for label, (xs, ys) in series.items():
        scale = 100.0 if percent_axes else 1.0
        ax.plot([x * scale for x in xs], [y * scale for y in ys], marker="o", label=label)
    if invert_x:
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_figure(fig: Figure, path: str | Path) -> None:
    """Lay out, render to PNG in memory, and write ``path`` atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
