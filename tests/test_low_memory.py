"""``--low-memory`` (issue 19): one model's weights resident at a time, the same results."""

from __future__ import annotations

import audit.run as run_mod
from audit.config import AuditConfig
from audit.models import Residency, load_model
from audit.run import run

# every lens that reads all three models, at light grids: relearning and quantization edit
# weights, steering and the logit lens read one model through another's parts
LENSES = ["behavior", "linear_probe", "logit_lens", "steering", "quantization", "relearn"]
LIGHT = {"steering": {"scales": [1.0], "poolings": ["mean"], "max_layers": 1},
         "quantization": {"bits": [4], "schemes": ["sym"], "bitsandbytes": False},
         "relearn": {"steps": [5], "retain_variant": False, "side_effect_items": 16, "seeds": 1}}


def _timeless(x):
    """A lens result without its wall-clock times (``seconds`` at any depth)."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


def test_a_put_down_model_reads_back_the_same_weights(suite):
    res = Residency(low_memory=True)
    b = load_model(suite / "base", "base", residency=res)
    u = load_model(suite / "head_only", "unlearned", residency=res)
    assert not b.resident and u.resident and res.peak == 1
    w = b.hf.lm_head.weight.clone()  # reads B back, puts U down
    assert b.resident and not u.resident and res.loads == {"base": 2, "unlearned": 1}
    assert u.n_layers == b.n_layers and u.config.vocab_size == b.config.vocab_size  # no load for the shape
    assert not u.resident
    u.hf  # noqa: B018
    b.hf.lm_head.weight.data.add_(1.0)  # an edit is lost when B is put down, by design ...
    assert b.resident and not u.resident
    u.hf  # noqa: B018
    assert (b.hf.lm_head.weight == w).all()  # ... and B reads back its checkpoint


def test_low_memory_holds_one_model_and_changes_no_result(suite, tmp_path, monkeypatch):
    made: list[Residency] = []

    class Counted(Residency):
        def __init__(self, low_memory: bool = False) -> None:
            super().__init__(low_memory)
            made.append(self)

    monkeypatch.setattr(run_mod, "Residency", Counted)
    logs = {}
    for low in (False, True):
        # a fresh cache each: scores, activations and relearning runs are computed, not read back
        monkeypatch.setenv("AUDIT_CACHE", str(tmp_path / f"cache_{low}"))
        cfg = AuditConfig(base=str(suite / "base"), unlearned=str(suite / "head_only"),
                          reference=str(suite / "reference_a"), forget=str(suite / "forget.jsonl"),
                          retain=str(suite / "retain.jsonl"), out=str(tmp_path / f"out_{low}"), lenses=LENSES,
                          lens_options=LIGHT, low_memory=low, max_items=60)
        logs[low] = run(cfg)
    fast, low = made
    assert fast.peak == 3 and set(fast.loads.values()) == {1}
    assert low.peak == 1
    # the lenses switch models, so weights are read back: more than one read per model
    assert sum(low.loads.values()) > 3, low.loads
    a, b = logs[False], logs[True]
    for name in LENSES:
        assert _timeless(a.lenses[name].model_dump()) == _timeless(b.lenses[name].model_dump()), name
    assert [v.label for v in a.verdicts] == [v.label for v in b.verdicts]
    assert a.verdicts[0].label == "SUPPRESSED"
