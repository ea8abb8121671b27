"""The organism lab: model organisms with known ground truth, and the calibration of the auditor on them.

It depends on the auditor core (:mod:`audit`); the core never imports it.

- :mod:`audit.lab.world` — the fictional world of people and closed-set attributes;
- :mod:`audit.lab.unlearning` — unlearning methods (GA, GradDiff, NPO, RMU) and the
  suppression constructions;
- :mod:`audit.lab.organisms` — training the organism suite (base, references, constructions);
- :mod:`audit.lab.realmodel` — comparison points on a real model (SmolLM2) and shipped
  real-knowledge items (``audit/lab/data/capitals.tsv``);
- :mod:`audit.lab.suite` — auditing every organism of a suite;
- :mod:`audit.lab.calibrate` — verdicts vs construction truth over suites (``audit calibrate``).
"""
