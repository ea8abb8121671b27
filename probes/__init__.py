"""Lenses: one file each, registered in :mod:`audit.registry` on import.

Every module of this package is imported here, so a new lens file registers itself.
"""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
