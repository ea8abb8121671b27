"""``make bench``: run every benchmark of issues #8 and #19 and write ``benchmarks/results.md``.

    python -m benchmarks.run                 # all nine, table to benchmarks/results.md
    python -m benchmarks.run --only 3,4      # some, table to stdout
    python -m benchmarks.run --quick         # smaller sizes (a smoke test, not for results.md)

Torch runs with ``BENCH_THREADS`` threads (default 1): the machine's cores are shared
with other jobs, and one thread per process keeps paired timings steady. Every
comparison is measured in one process, both sides interleaved, and reported as a ratio.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

BENCHES = {
    "1": ("capture vs floor", "benchmarks.bench_capture"),
    "2": ("audit vs forward budget", "benchmarks.bench_budget"),
    "3": ("steering grid", "benchmarks.bench_steering"),
    "4": ("leak@k sampling", "benchmarks.bench_leak"),
    "5": ("scaling", "benchmarks.bench_scaling"),
    "6": ("memory", "benchmarks.bench_memory"),
    "7": ("1B-class checkpoint", "benchmarks.bench_real_1b"),
    "8": ("sweep overhead", "benchmarks.bench_sweep"),
    "9": ("issue-21 lenses on SmolLM2", "benchmarks.bench_new_lenses"),
}
RESULTS = Path(__file__).resolve().parent / "results.md"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "?"


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _fmt_met(met: bool | None) -> str:
    return "skipped" if met is None else ("yes" if met else "**no**")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated benchmark numbers (1-9)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes; a smoke test")
    ap.add_argument("--out", help="markdown file to write (default: benchmarks/results.md for a full run, else stdout)")
    args = ap.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",")] if args.only else list(BENCHES)
    bad = [b for b in chosen if b not in BENCHES]
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; choose from {', '.join(BENCHES)}")
    out = Path(args.out) if args.out else (RESULTS if not args.only and not args.quick else None)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = int(os.environ.setdefault("BENCH_THREADS", "1"))
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    from audit.progress import set_progress
    from benchmarks.common import Row

    torch.set_num_threads(threads)
    set_progress(False)
    logging.getLogger("audit").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()

    started = datetime.now(timezone.utc)
    load_before = _load()
    t_all = time.perf_counter()
    rows: list[Row] = []
    details: list[tuple[str, list[str], float]] = []
    for b in chosen:
        title, mod = BENCHES[b]
        print(f"[bench] {b}. {title} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            sec = importlib.import_module(mod).run(quick=args.quick)
            rows += sec.rows
            det = sec.details
        except Exception as e:  # noqa: BLE001 (a failed benchmark is a row, not a crash)
            traceback.print_exc()
            rows.append(Row(f"{b}. {title}", "—", f"error: {type(e).__name__}: {e}", "—", False))
            det = []
        secs = time.perf_counter() - t
        details.append((f"{b}. {title}", det, secs))
        print(f"[bench] {b}. {title}: {secs:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all

    met = [r for r in rows if r.met]
    judged = [r for r in rows if r.met is not None]
    cmd = "make bench" if out == RESULTS and not args.only else "python -m benchmarks.run " + " ".join(argv or sys.argv[1:])
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`) from an actual run; never edited by hand.",
        "",
        f"- command: `{cmd}` ({'quick sizes' if args.quick else 'full sizes'})",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- machine: {_cpu()}, `nproc` {os.cpu_count()}, {_ram_gib()} RAM, {platform.platform()}",
        f"- torch {torch.__version__} with {torch.get_num_threads()} thread(s) (`BENCH_THREADS`), transformers "
        f"{transformers.__version__}, Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) at start {load_before}, at end {_load()}: other jobs share this machine, so "
        "every comparison is measured in one process, both sides interleaved, as a ratio",
        f"- wall time {total / 60:.1f} min",
        f"- targets met: {len(met)} of {len(judged)}" + (f" ({len(rows) - len(judged)} skipped)" if len(judged) < len(rows) else ""),
        "",
        "| benchmark | case | measured | target | met | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.bench} | {r.case} | {r.measured} | {r.target} | {_fmt_met(r.met)} | {r.note} |")
    lines += ["", "## Details", ""]
    for title, det, secs in details:
        lines += [f"### {title} ({secs:.0f} s)", ""]
        lines += [d if d.startswith("|") or not d else f"- {d}" for d in det] if det else ["(no details)"]
        lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    if out is None:
        print(text)
    else:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
        print(f"[bench] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
