"""The one lens registry (inspect_ai's ``@scorer`` + lm-eval's ``Registry``).

A lens is a function ``(ctx, config) -> LensResult`` registered with its config model and
its data model (both in the torch-free :mod:`audit.lensdata`), so every result records the
arguments that produced it and the verdict and reports read its data as typed fields.
Lenses live in ``probes/`` (one file each) and register on import; ``audit`` finds them
only here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from audit.errors import InputError, validation_message
from audit.lensdata import LENS_MODELS, LensConfig, LensData, lens_data, unexpected_keys

if TYPE_CHECKING:
    from audit.context import AuditContext
    from audit.schema import LensResult


__all__ = ["LENS_SETS", "LensConfig", "LensData", "LensSpec", "available_lenses", "expand_lenses", "get_lens",
           "register_lens"]


@dataclass(frozen=True)
class LensSpec:
    name: str
    fn: Callable[[AuditContext, Any], LensResult]
    config_cls: type[LensConfig]
    data_cls: type[LensData]
    """What the lens writes to ``LensResult.data`` (:mod:`audit.lensdata`)."""
    description: str
    version: str = "1"
    """Version of the lens's code, stamped on each of its results (``LensResult.lens_version``).
    Bump it when a change makes the lens's earlier results stale: ``audit run --resume`` then
    recomputes them."""

    def make_config(self, options: dict[str, Any] | None) -> LensConfig:
        try:
            return self.config_cls.model_validate(options or {})
        except ValidationError as e:
            raise InputError(validation_message(e, f"lens '{self.name}' option")) from None

    def check_data(self, res: LensResult) -> list[str]:
        """Check a result of this lens against its data model: the data must fit it (required
        fields, types, per-item lists as long as their ids). Returns the keys the lens wrote
        that the model does not declare (the tests hold every lens to none:
        :func:`audit.lensdata.check_lens_data`). A failed lens is not checked.

        Raises:
            ValueError: the data does not fit, naming the first problem.
        """
        if res.error is not None:
            return []
        try:
            return unexpected_keys(lens_data(res, self.data_cls))
        except ValidationError as e:
            raise ValueError(f"lens '{self.name}' wrote data that does not fit {self.data_cls.__name__}: "
                             f"{validation_message(e, 'field')}") from None


_REGISTRY: dict[str, LensSpec] = {}


def register_lens(name: str, config: type[LensConfig], data: type[LensData], description: str = "",
                  version: str = "1"):
    """Decorator registering a lens function under ``name`` with its config model and data
    model, at code version ``version``.

    A built-in lens's two models must be the ones :data:`audit.lensdata.LENS_MODELS` pairs
    with its name, so reports and ``audit report`` read its results without torch.

    Raises:
        ValueError: the name is taken by another function, or the models are not the table's.
    """
    if name in LENS_MODELS and LENS_MODELS[name] != (config, data):
        raise ValueError(f"lens '{name}' registered with {config.__name__} / {data.__name__}, but "
                         f"audit.lensdata.LENS_MODELS pairs it with "
                         f"{' / '.join(c.__name__ for c in LENS_MODELS[name])}")

    def deco(fn):
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"lens '{name}' registered twice")
        _REGISTRY[name] = LensSpec(name, fn, config, data,
                                   description or (fn.__doc__ or "").strip().split("\n")[0], version)
        return fn

    return deco


def _load() -> None:
    import probes  # noqa: F401  (registers the built-in lenses)


def available_lenses() -> dict[str, LensSpec]:
    """All registered lenses, by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


# named lens sets: ``default`` is the battery that can reach every label (DELETED needs
# informative linear_probe, relearn and quantization readings); ``quick`` is a first look
LENS_SETS: dict[str, tuple[str, ...]] = {
    "quick": ("behavior",),
    "default": ("behavior", "linear_probe", "logit_lens", "steering", "sae", "quantization", "relearn",
                "leak_at_k", "similarity"),
}


def expand_lenses(names: list[str]) -> list[str]:
    """Lens names with the named sets (``quick``, ``default``, ``full``) expanded, in order, once each."""
    out: list[str] = []
    for name in names:
        if name == "full":
            group = list(available_lenses())
        else:
            group = list(LENS_SETS.get(name, (name,)))
        out += [g for g in group if g not in out]
    return out


def get_lens(name: str) -> LensSpec:
    """Look a lens up by name.

    Raises:
        InputError: for an unknown name, suggesting the closest ones.
    """
    lenses = available_lenses()
    if name in lenses:
        return lenses[name]
    close = difflib.get_close_matches(name, list(lenses), n=2, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise InputError(f"unknown lens '{name}'.{hint} Available: {', '.join(lenses)}")
