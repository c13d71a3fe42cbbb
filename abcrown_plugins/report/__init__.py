"""Readable results: CSV, Markdown tables and PNG plots, all written atomically."""

from abcrown_plugins.report.tables import markdown_table, write_csv, write_markdown
from abcrown_plugins.report.plots import new_figure, plot_xy, save_figure

__all__ = ["markdown_table", "new_figure", "plot_xy", "save_figure", "write_csv", "write_markdown"]
