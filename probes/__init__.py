"""Lenses: one file each, registered in :mod:`audit.registry` on import."""

from probes import behavior  # noqa: F401
