"""3. Steering grid: the resumed, replica-batched forward vs a full forward per setting.

The default grid of the steering lens (every site, candidate, form and scale, plus 16
norm-matched random controls per site × scale × form) is scored on one fold of forget
items, and its settings on one fold of retain items, as one fold of the lens's sweep
does. Three ways, each through :meth:`audit.intervene.PreparedItems.logprobs`:

- ``naive``: one full forward pass per setting and per control (a hook at the site);
- ``batched``: all replicas of a site in one full forward pass (hooked), no resume;
- ``fast``: what the lens runs: the prompts forwarded once per batch, and every replica
  running only the blocks after the site from the cached residual.

The directions are random unit vectors scaled like the lens's (the speed does not depend
on what they are); the three ways must give the same log-probs (largest difference shown).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import Row, Section, describe, load_items_scaled, med, organisms_dir, paired, random_llama, ratio

TARGET = 3.0


def _grid(n_items: int, n_retain: int, model_path, label: str, rounds: int) -> tuple[Row, list[str]]:
    from audit.intervene import PreparedItems as _Prepared
    from audit.models import load_model
    from probes.steering import EMBED, SteeringConfig, _settings

    cfg = SteeringConfig()
    m = load_model(model_path, "unlearned")
    n = m.n_layers
    layers = list(range(n)) if n <= cfg.max_layers else sorted(
        {int(round(x)) for x in np.linspace(0, n - 1, cfg.max_layers)})
    sites = [EMBED, *[f"blocks.{layer}.hook_resid_post" for layer in layers]]
    settings = _settings(cfg, sites)
    prep_f = _Prepared(m, load_items_scaled(n_items, "forget"))
    prep_r = _Prepared(m, load_items_scaled(n_retain, "retain"))
    gen = torch.Generator().manual_seed(0)
    work = []  # (prepared, site, add, abl)
    n_rep = 0
    for site in sites:
        here = [s for s in settings if s.site == site]
        keys = sorted({s.control_key for s in here})
        add, abl = [], []
        for s in here + [None] * (len(keys) * cfg.n_controls):
            u = torch.randn(m.d_model, generator=gen)
            u = u / u.norm()
            ablate = s.form == "ablate" if s is not None else len(add) % 3 == 0
            add.append(torch.zeros(m.d_model) if ablate else 5.0 * u)
            abl.append(u if ablate else torch.zeros(m.d_model))
        work.append((prep_f, site, torch.stack(add), torch.stack(abl)))
        work.append((prep_r, site, torch.stack(add[: len(here)]), torch.stack(abl[: len(here)])))
        n_rep += len(add)
    tpp = cfg.tokens_per_pass
    outs: dict[str, list[torch.Tensor]] = {}

    def naive() -> None:
        outs["naive"] = [torch.cat([p.logprobs(site, a[r : r + 1], b[r : r + 1], tpp, resume=False)
                                    for r in range(len(a))]) for p, site, a, b in work]

    def batched() -> None:
        outs["batched"] = [p.logprobs(site, a, b, tpp, resume=False) for p, site, a, b in work]

    def fast() -> None:
        outs["fast"] = [p.logprobs(site, a, b, tpp) for p, site, a, b in work]

    t = paired({"naive": naive, "batched": batched, "fast": fast}, rounds, warmup=False)
    diff = 0.0
    for x, y, z in zip(outs["naive"], outs["batched"], outs["fast"], strict=True):
        ok = torch.isfinite(x)
        diff = max(diff, float((x - z)[ok].abs().max()), float((y - z)[ok].abs().max()))
    speed = ratio(t, "naive", "fast")
    row = Row("3. steering grid", f"{label}: {describe(m)}; {len(sites)} sites × {n_rep // len(sites)} replicas "
              f"({len(settings) // len(sites)} settings + controls), {n_items} forget + {n_retain} retain items",
              f"{speed:.2f}× faster than naive (naive {med(t['naive']):.2f} s, batched {med(t['batched']):.2f} s, "
              f"fast {med(t['fast']):.2f} s; max |Δ log p| {diff:.1e})", f"≥ {TARGET:.0f}×", speed >= TARGET)
    det = [f"{label}: batching alone {ratio(t, 'naive', 'batched'):.1f}×, resuming on top of it "
           f"{ratio(t, 'batched', 'fast'):.1f}×; per round naive {[round(x, 2) for x in t['naive']]} s, "
           f"batched {[round(x, 2) for x in t['batched']]} s, fast {[round(x, 2) for x in t['fast']]} s"]
    return row, det


def run(quick: bool = False) -> Section:
    sec = Section()
    row, det = _grid(30, 22, organisms_dir() / "rmu_gentle", "organism (rmu_gentle), default grid", 1 if quick else 2)
    sec.rows.append(row)
    sec.details += det
    deeper = random_llama("steer_8x256", d_model=256, n_layers=8, n_heads=8, d_mlp=1024)
    row, det = _grid(8, 8, deeper, "random-init Llama, 8 blocks, default grid", 1)
    sec.rows.append(row)
    sec.details += det
    return sec
