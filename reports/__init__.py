"""HTML reports, rendered from a saved results file only (never imports torch)."""

from reports.render import render, render_file

__all__ = ["render", "render_file"]
