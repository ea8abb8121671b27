"""HTML reports, rendered from a saved results file only (never imports torch).

Lens sections live in their own modules here (registered with ``@section``); every
module of the package is imported so a new one registers itself.
"""

import importlib
import pkgutil

from reports.render import render, render_file, section

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["render", "render_file", "section"]
