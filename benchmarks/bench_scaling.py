"""5. Scaling: audit time vs number of items, and capture time vs layers captured.

(a) ``audit.run`` on the organisms (B = base, U = rmu_gentle, N = reference_a) with N
forget and N retain items (the organism sets cycled with fresh ids and subjects), for
N = 50, 100, 200, 400, over the lenses whose work grows with the items: behavior,
logit_lens, similarity, steering (one block and the embedding), leak@k (n = 8) and 4-bit
quantization. The time fitted excludes loading the checkpoints (a constant).

(b) Capture of all layers' residuals of 200 items on random-init Llamas (d = 128) with
2, 4, 8 and 16 blocks, every block captured.

The fitted exponent is the slope of log time on log size: 1 is linear growth.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import Row, Section, fit_exponent, load_items_scaled, organisms_dir, random_llama, work_dir

TARGET = 1.15
LENSES = ["behavior", "logit_lens", "similarity", "steering", "leak_at_k", "quantization"]
OPTIONS = {
    "steering": {"layers": [1], "directions": ["base_minus_unlearned"], "poolings": ["last"], "scales": [1.0]},
    "leak_at_k": {"n": 8},
    "quantization": {"bits": [4], "schemes": ["sym"]},
}


def _audit_seconds(n: int, root: Path) -> tuple[float, dict[str, float]]:
    from audit.config import AuditConfig
    from audit.items import write_items
    from audit.run import run

    d = root / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    write_items(load_items_scaled(n, "forget"), d / "forget.jsonl")
    write_items(load_items_scaled(n, "retain"), d / "retain.jsonl")
    o = organisms_dir()
    cfg = AuditConfig(base=str(o / "base"), unlearned=str(o / "rmu_gentle"), reference=str(o / "reference_a"),
                      forget=str(d / "forget.jsonl"), retain=str(d / "retain.jsonl"), out=str(d / "out"),
                      lenses=LENSES, lens_options=OPTIONS, cache_dir=str(d / "cache"))
    log = run(cfg)
    errors = [k for k, v in log.lenses.items() if v.error]
    if errors:
        raise RuntimeError(f"lenses failed at {n} items: {errors}")
    return log.timings["total"] - log.timings["load"], {k: v for k, v in log.timings.items() if k.startswith("lens:")}


def _capture_seconds(n_layers: int, items) -> float:
    from audit.activations import capture
    from audit.models import load_model

    m = load_model(random_llama(f"depth_{n_layers}", d_model=128, n_layers=n_layers, n_heads=4, d_mlp=512), "base")
    capture(m, items[:16], cache_dir=tempfile.mkdtemp(prefix="bench_warm_"))  # warm-up
    best = float("inf")
    for _ in range(2):
        d = tempfile.mkdtemp(prefix="bench_depth_")
        t = time.perf_counter()
        capture(m, items, cache_dir=d)
        best = min(best, time.perf_counter() - t)
        shutil.rmtree(d, ignore_errors=True)
    return best


def run(quick: bool = False) -> Section:
    sec = Section()
    sizes = [50, 100, 200] if quick else [50, 100, 200, 400]
    root = Path(tempfile.mkdtemp(prefix="scaling_", dir=work_dir()))
    try:
        _audit_seconds(20, root)  # warm-up: imports, first calls
        secs, per_lens = [], {}
        for n in sizes:
            s, lens = _audit_seconds(n, root)
            secs.append(s)
            per_lens[n] = lens
    finally:
        shutil.rmtree(root, ignore_errors=True)
    k = fit_exponent(sizes, secs)
    sec.rows.append(Row("5. scaling: items", f"organisms, lenses {', '.join(LENSES)} (reduced grids); N forget + N "
                        f"retain items, N = {', '.join(map(str, sizes))}",
                        f"exponent {k:.2f} ({', '.join(f'{s:.1f}' for s in secs)} s)", f"≤ {TARGET}", k <= TARGET))
    sec.details.append("audit seconds (without loading) by items: " + ", ".join(
        f"{n}: {s:.1f}" for n, s in zip(sizes, secs, strict=True)))
    sec.details.append("per lens: " + "; ".join(
        f"{n}: " + ", ".join(f"{name[5:]} {v:.1f}" for name, v in lens.items()) for n, lens in per_lens.items()))
    depths = [2, 4, 8] if quick else [2, 4, 8, 16]
    items = load_items_scaled(200, "forget")
    csecs = [_capture_seconds(d, items) for d in depths]
    k2 = fit_exponent(depths, csecs)
    sec.rows.append(Row("5. scaling: layers", f"random-init Llamas d=128 with {', '.join(map(str, depths))} blocks, all "
                        "captured, 200 items", f"exponent {k2:.2f} ({', '.join(f'{s:.2f}' for s in csecs)} s)",
                        f"≤ {TARGET}", k2 <= TARGET))
    return sec
