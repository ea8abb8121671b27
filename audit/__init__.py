"""unlearning-audit: decide whether unlearned knowledge was deleted or only suppressed.

``audit.run(config)`` is the library entry point; importing this package does not
import torch (reports render from results files on machines without it).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["run", "AuditConfig"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from audit.run import run

        return run
    if name == "AuditConfig":
        from audit.config import AuditConfig

        return AuditConfig
    raise AttributeError(name)
