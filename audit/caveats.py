"""The no-reference caveat: one wording for every lens note, verdict reason and report.

Without a never-trained reference N, every end point is a knowledge-free estimate
(chance, an answer prior, a contrast's null), and the verdict gives no DELETED
(docs/verdict.md). Whatever says so starts with :data:`NO_REFERENCE`, so a reader (or a
grep) finds the caveat the same way wherever it is written. Torch-free: ``reports``
uses it too.
"""

from __future__ import annotations

NO_REFERENCE = "no reference model"
"""How every note about a run without a never-trained reference begins."""

NO_REFERENCE_VERDICT = "end points are knowledge-free estimates, so DELETED is not certified"
"""What the missing reference means for the verdict (verdict reasons, the report's header)."""


def no_reference_note(end_point: str) -> str:
    """The caveat for a run without a reference: ``no reference model: {end_point}``.

    Args:
        end_point: what stood in for N, and what that costs (``the end point is chance,
            not a quantized N``).
    """
    return f"{NO_REFERENCE}: {end_point}"
