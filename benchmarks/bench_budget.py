"""2. Audit vs its forward budget: the full battery's time over the forward passes it needs.

One ``audit.run`` with every lens on the organisms (B = base, U = rmu_gentle, N =
reference_a). The *predicted minimum* counts, per lens, the tokens a model must be
forwarded over (and, for relearning, the forward+backward steps), as an implementation
that wastes nothing would, and prices them with one bare ``transformers`` model (not
wrapped by the bridge) timed in the same process:

- ``t_tok``: seconds per token of a bare forward pass (the fastest of batches of 64,
  128 and 256 sequences of forget prompts + answers);
- ``t_step``: seconds of one bare forward+backward on 16 training texts (relearn's batch).

Counted forward work (R = models audited):

- capture: R × the prompt tokens of both item sets, once (every activation lens reads it);
- scoring: R × (prompt tokens + the candidates' tokens after their first) of both sets;
- steering: per fold and site, (settings + controls) replicas of the forget fold's and
  settings replicas of the retain fold's tokens, each costing the share of a forward
  after the site (the embedding site: all of it), plus one prefix pass; the chosen
  settings on B and N;
- sae: B's tokens on both prompt sets (training data), then restoration replicas as in
  steering at the SAE's layer;
- quantization: settings × R × the forget set's scoring tokens;
- relearn: runs × R × steps forward+backward steps, and the scoring of held-out items at
  each step count of the grid;
- leak@k: R × (forget prompt tokens + n × prompts × (new tokens − 1)) (cached decoding);
- linear_probe, logit_lens, similarity: nothing beyond the capture.

Not counted (they are no forward pass): loading checkpoints (excluded from the audit
time too), the SAE's own training, the probes' scikit-learn fits, bootstraps, copying
and quantizing weights, optimizer steps.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Row, Section, organisms_dir, work_dir

TARGET = 1.5
LENSES = ["behavior", "linear_probe", "logit_lens", "steering", "sae", "quantization", "relearn", "leak_at_k",
          "similarity"]


def _unit_costs(path: Path, items) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    from audit.items import KnowledgeItem
    from audit.scoring import encode_prompt, pad_batch, pad_id_of
    from probes.relearn import training_text

    bare = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    seqs = [encode_prompt(tok, training_text(it)) for it in items]
    pad = pad_id_of(tok)
    best = float("inf")
    with torch.no_grad():
        for bs in (64, 128, 256):
            batch = (seqs * (bs // len(seqs) + 1))[:bs]
            ids, mask = pad_batch(batch, pad)
            bare(input_ids=ids, attention_mask=mask)
            for _ in range(3):
                t = time.perf_counter()
                bare(input_ids=ids, attention_mask=mask)
                best = min(best, (time.perf_counter() - t) / int(mask.sum()))
    train = copy.deepcopy(bare).train()
    for p in train.parameters():
        p.requires_grad_(True)
    ids, mask = pad_batch(seqs[:16], pad)
    labels = ids.masked_fill(mask == 0, -100)
    steps = []
    for _ in range(4):
        t = time.perf_counter()
        train(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        steps.append(time.perf_counter() - t)
        train.zero_grad()
    assert isinstance(items[0], KnowledgeItem)
    return best, float(min(steps[1:]))


def _frac(model, site: str) -> float:
    """Share of a forward pass's cost after ``site`` (by parameters used per token)."""
    L = model.n_layers
    per_block = sum(p.numel() for p in model.hf.model.layers[0].parameters())
    head = model.hf.lm_head.weight.numel()
    if not site.startswith("blocks."):
        return 1.0
    layer = int(site.split(".")[1])
    return ((L - 1 - layer) * per_block + head) / (L * per_block + head)


def _counts(log, models, items) -> dict[str, dict[str, float]]:
    """Forward tokens (``tok``) and forward+backward steps (``step``) each lens needs."""
    from audit.crossfit import subject_folds as _folds
    from audit.scoring import encode_items
    from probes.relearn import split_by_subject

    U = models["unlearned"]
    tok = U.tokenizer
    R = len(models)
    enc = {k: encode_items(tok, v) for k, v in items.items()}

    def prompt_tokens(k, idx=None):
        ps = enc[k].prompts
        return sum(len(ps[i]) for i in (range(len(ps)) if idx is None else idx))

    def score_tokens(k, idx=None):
        e = enc[k]
        rng = range(len(e.prompts)) if idx is None else idx
        return sum(len(e.prompts[i]) + sum(len(c) - 1 for c in e.candidates[i]) for i in rng)

    seed = log.config["seed"]
    out: dict[str, dict[str, float]] = {}
    out["behavior"] = {"tok": R * (score_tokens("forget") + score_tokens("retain"))}
    out["linear_probe"] = {"tok": R * (prompt_tokens("forget") + prompt_tokens("retain"))}  # the shared capture
    lenses = log.lenses

    def replica_work(folds, fold_f, fold_r, sites_reps) -> float:
        total = 0.0
        for e in range(folds):
            f_idx = np.flatnonzero(fold_f == e)
            r_idx = np.flatnonzero(fold_r == e)
            tf, tr = score_tokens("forget", f_idx), score_tokens("retain", r_idx)
            for site, n_forget, n_retain in sites_reps:
                fr = _frac(U, site)
                total += (tf + tr) + fr * (n_forget * tf + n_retain * tr)  # one prefix pass each, then replicas
        return total

    st = lenses.get("steering")
    if st is not None and st.error is None:
        cfg = st.config
        fold_f = _folds(items["forget"], cfg["folds"], seed)
        fold_r = _folds(items["retain"], cfg["folds"], seed + 1)
        rows = st.data["dose_response"]
        reps = []
        for site in st.data["sites"]:
            here = [r for r in rows if r["site"] == site]
            keys = {(r["form"], abs(r["scale"])) for r in here}
            reps.append((site, len(here) + len(keys) * cfg["n_controls"], len(here)))
        work = replica_work(cfg["folds"], fold_f, fold_r, reps)
        work += sum(score_tokens("forget", np.flatnonzero(fold_f == e)) * (R - 1) for e in range(cfg["folds"]))
        out["steering"] = {"tok": work}
    sae = lenses.get("sae")
    if sae is not None and sae.error is None:
        cfg = sae.config
        fold_f = _folds(items["forget"], cfg["folds"], seed)
        fold_r = _folds(items["retain"], cfg["folds"], seed + 1)
        n_sc = len([s for s in cfg["scales"] if s > 0])
        site = sae.data["hook"]
        work = prompt_tokens("forget") + prompt_tokens("retain")
        work += replica_work(cfg["folds"], fold_f, fold_r, [(site, n_sc * (1 + cfg["n_controls"]), n_sc)])
        work += _frac(U, site) * (R - 1) * score_tokens("forget")
        out["sae"] = {"tok": work}
    q = lenses.get("quantization")
    if q is not None and q.error is None:
        out["quantization"] = {"tok": len(q.data["settings"]) * R * score_tokens("forget")}
    rl = lenses.get("relearn")
    if rl is not None and rl.error is None:
        cfg = rl.config
        a_idx, b_idx = split_by_subject(items["forget"], seed)
        targets = {"A→B": b_idx, "B→A": a_idx, "retain": list(range(len(items["forget"])))}
        runs = sorted({k.split(":")[0] for k in rl.data["seconds"] if k != "total"})
        steps = max(cfg["steps"])
        side = [items["retain"].index(it) for it in items["retain"] if it.id in set(rl.data["side_effect_items"])]
        grid = len(set(cfg["steps"]))
        ev = sum(grid * (R * score_tokens("forget", targets[k]) + score_tokens("retain", side)) for k in runs)
        out["relearn"] = {"tok": ev, "step": len(runs) * R * steps}
    lk = lenses.get("leak_at_k")
    if lk is not None and lk.error is None:
        n, new = lk.data["n"], lk.data["max_new_tokens"]
        out["leak_at_k"] = {"tok": R * (prompt_tokens("forget") + n * len(items["forget"]) * max(0, new - 1))}
    for name in ("logit_lens", "similarity"):
        if name in lenses:
            out[name] = {"tok": 0.0}
    return out


def run(quick: bool = False) -> Section:
    from audit.config import AuditConfig
    from audit.models import load_model
    from audit.run import run as audit_run
    from audit.sources import load_items

    sec = Section()
    o = organisms_dir()
    root = Path(tempfile.mkdtemp(prefix="budget_", dir=work_dir()))
    saved = os.environ.get("AUDIT_CACHE")
    os.environ["AUDIT_CACHE"] = str(root / "cache")  # nothing cached earlier (an SAE, activations) is reused
    try:
        cfg = AuditConfig(base=str(o / "base"), unlearned=str(o / "rmu_gentle"), reference=str(o / "reference_a"),
                          forget=str(o / "forget.jsonl"), retain=str(o / "retain.jsonl"), out=str(root / "out"),
                          lenses=LENSES, cache_dir=str(root / "cache"), max_items=60 if quick else None)
        log = audit_run(cfg)
    finally:
        if saved is None:
            os.environ.pop("AUDIT_CACHE", None)
        else:
            os.environ["AUDIT_CACHE"] = saved
        shutil.rmtree(root, ignore_errors=True)
    items = {k: load_items(getattr(cfg, k))[: cfg.max_items] if cfg.max_items else load_items(getattr(cfg, k))
             for k in ("forget", "retain")}
    models = {r: load_model(getattr(cfg, r), r) for r in ("base", "unlearned", "reference")}
    t_tok, t_step = _unit_costs(o / "base", items["forget"])
    counts = _counts(log, models, items)
    total = log.timings["total"] - log.timings["load"]
    pred = {k: v.get("tok", 0.0) * t_tok + v.get("step", 0) * t_step for k, v in counts.items()}
    minimum = sum(pred.values())
    r = total / minimum
    errors = [k for k, v in log.lenses.items() if v.error]
    n_f, n_r = len(items["forget"]), len(items["retain"])
    sec.rows.append(Row(
        "2. audit vs forward budget", f"organisms, full battery ({len(LENSES)} lenses, default options), "
        f"{n_f} forget + {n_r} retain items, B/U/N",
        f"{r:.1f}× (audit {total:.0f} s without loading; predicted minimum {minimum:.1f} s)", f"≤ {TARGET}",
        r <= TARGET and not errors, f"lenses failed: {errors}" if errors else ""))
    lines = [f"unit costs: bare forward {t_tok * 1e6:.2f} µs/token, bare forward+backward of 16 texts "
             f"{t_step * 1e3:.1f} ms; loading the checkpoints {log.timings['load']:.1f} s (not counted)", "",
             "| lens | time (s) | forward tokens | fwd+bwd steps | predicted min (s) | time / min |",
             "|---|---:|---:|---:|---:|---:|"]
    for k in LENSES:
        t = log.timings.get(f"lens:{k}", float("nan"))
        c = counts.get(k, {})
        p = pred.get(k, 0.0)
        lines.append(f"| {k} | {t:.1f} | {c.get('tok', 0):,.0f} | {c.get('step', 0)} | {p:.2f} | "
                     + (f"{t / p:.1f}× |" if p > 0 else "— (no forward of its own) |"))
    lines.append(f"| **total** | {total:.1f} | {sum(c.get('tok', 0) for c in counts.values()):,.0f} | "
                 f"{sum(c.get('step', 0) for c in counts.values())} | {minimum:.2f} | {r:.1f}× |")
    rest = [k for k in LENSES if k not in ("linear_probe", "sae")]
    t_rest = sum(log.timings.get(f"lens:{k}", 0.0) for k in rest)
    p_rest = sum(pred.get(k, 0.0) for k in rest)
    lines += ["", "behavior's time includes scoring B/U/N on both sets (shared by every lens); linear_probe's "
              "includes the shared capture.",
              f"without linear_probe (its scikit-learn fits) and sae (its SAE training), the other lenses take "
              f"{t_rest:.1f} s for a predicted minimum of {p_rest:.1f} s: {t_rest / p_rest:.1f}×"]
    sec.details += lines
    return sec
