"""7. A 1B-class checkpoint: a random-init Llama of Llama-3.2-1B's shape under ``--low-memory``.

Builds three checkpoints from a config (no download): B (seed 0), U (B with a small
perturbation of its last two blocks' MLP down-projections) and N (seed 1), each saved as
an HF folder (safetensors) with the organisms' word-level tokenizer; the embedding keeps
Llama-3.2-1B's 128,256 rows (tied to the head, as there) and the tokenizer emits only the
first few hundred ids. The shape is Llama-3.2-1B's config: hidden 2048, 16 layers, 32
heads, 8 key/value heads, MLP 8192, vocab 128,256, tied embeddings, RoPE θ 500,000 with
llama3 scaling: 1.24B parameters, 4.9 GB in fp32.

The audit is the CLI as users run it, ``audit run --low-memory`` with behavior, logit_lens
(the representation read-out), quantization (RTN 4-bit) and relearn with LoRA on 16
forget + 16 retain items of the organisms' world, in a fresh process whose peak resident
set size is the kernel's own count (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper
whose only child is the audit), so short spikes count too. The target is the issue's:
peak RSS ≤ one model's weights + 2 GiB. Time per lens comes from ``audit_log.json``, and the
peak within each lens's window from an RSS timeline the wrapper samples every 50 ms. The
machine is shared: past ``$BENCH_RSS_CAP_GIB`` (default 55% of RAM) the audit is stopped, and
the row says so, with the lenses finished before it and their peaks.

Every cache the run writes (scores, activations, relearning) goes to a fresh
``$AUDIT_CACHE``, so nothing is reused. Checkpoints are built under ``$BENCH_1B_DIR``
(default ``/tmp``) and deleted afterwards: 15 GB for the three. ``--quick`` builds the
same architecture at a tiny size (hidden 256, 2 layers) instead.

    python -m benchmarks.bench_real_1b            # the 1B shape, prints the section as JSON
    python -m benchmarks.bench_real_1b --quick    # the tiny shape
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Row, Section

GIB = 1 << 30
BENCH = "7. 1B-class checkpoint"
LENSES = ("behavior", "logit_lens", "quantization", "relearn")
N_ITEMS = 16

LLAMA_32_1B = {
    # meta-llama/Llama-3.2-1B's config.json (architecture fields)
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
TINY = {**LLAMA_32_1B, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32}

# a small battery that still exercises every memory path of a real audit: scores of B/U/N,
# a per-layer read-out, in-place quantization and LoRA relearning (which `method: auto`
# picks above `lora_above` = 300M parameters; named here so the tiny shape takes it too)
CONFIG = {
    "lens_options": {
        "quantization": {"bits": [4], "schemes": ["sym"], "bitsandbytes": False, "n_boot": 200},
        "relearn": {"method": "lora", "steps": [4], "seeds": 1, "folds": 1, "retain_variant": False,
                    "batch_size": 8, "side_effect_items": 8, "n_boot": 200},
        "behavior": {"n_boot": 200},
    },
}
POLICY = "min_items: 16\n"  # the default policy asks for 20 forget items; this set has 16


# ---------------------------------------------------------------- building the checkpoints


def build(out: Path, shape: dict, *, seed: int, perturb_from: Path | None = None) -> None:
    """One random-init checkpoint (or, with ``perturb_from``, that one with its last two
    blocks' ``mlp.down_proj`` nudged by 1% of their scale); run in a child process so its
    memory is returned before the audit."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from audit.lab.organisms import make_tokenizer
    from audit.lab.world import WorldConfig, make_world

    tok = make_tokenizer(make_world(WorldConfig(seed=0)))
    torch.manual_seed(seed)
    if perturb_from is not None:
        model = LlamaForCausalLM.from_pretrained(perturb_from, dtype=torch.float32)
        n = model.config.num_hidden_layers
        with torch.no_grad():
            for layer in model.model.layers[n - 2:]:
                w = layer.mlp.down_proj.weight
                w.add_(torch.randn_like(w) * w.std() * 0.01)
    else:
        cfg = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, architectures=["LlamaForCausalLM"])
        model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _build_child(out: Path, shape: dict, seed: int, perturb_from: Path | None) -> float:
    t = time.perf_counter()
    args = [sys.executable, "-m", "benchmarks.bench_real_1b", "--build", str(out), json.dumps(shape), str(seed),
            str(perturb_from or "")]
    res = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"building {out.name} failed: {res.stderr.strip().splitlines()[-3:]}")
    return time.perf_counter() - t


def write_items(folder: Path) -> tuple[Path, Path]:
    from audit.items import write_items as write
    from audit.lab.world import WorldConfig, make_world

    world = make_world(WorldConfig(seed=0))
    f, r = folder / "forget.jsonl", folder / "retain.jsonl"
    write(world.items("forget")[:N_ITEMS], f)
    write(world.items("retain")[:N_ITEMS], r)
    return f, r


# ---------------------------------------------------------------- measuring


def _env() -> dict[str, str]:
    threads = os.environ.get("BENCH_THREADS", "1")
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def rss_cap() -> int:
    """RSS at which the measured process is stopped (``$BENCH_RSS_CAP_GIB``, default 55% of
    RAM): this machine is shared, and a peak past it is reported as at least the cap."""
    if os.environ.get("BENCH_RSS_CAP_GIB"):
        return int(float(os.environ["BENCH_RSS_CAP_GIB"]) * GIB)
    return int(0.55 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def measured(argv: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run ``argv`` as the only child of a fresh wrapper process: its exit code, seconds,
    stderr tail, peak RSS (bytes, the kernel's ``ru_maxrss``), an RSS timeline (epoch
    seconds, bytes) and whether it was stopped at :func:`rss_cap`."""
    wrapper = [sys.executable, "-m", "benchmarks.bench_real_1b", "--measure", str(rss_cap()), *argv]
    res = subprocess.run(wrapper, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"measuring wrapper failed: {res.stderr.strip().splitlines()[-3:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _vm_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _wrap(cap: int, argv: list[str]) -> dict:
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True)
        timeline: list[tuple[float, int]] = []
        capped = False
        while proc.poll() is None:
            r = _vm_rss(proc.pid)
            if not timeline or r != timeline[-1][1]:
                timeline.append((round(time.time(), 2), r))
            if r > cap and not capped:
                capped = True
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            time.sleep(0.05)
        seconds = time.perf_counter() - t
        err.seek(0)
        stderr = err.read()[-4000:]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: kB
    return {"rc": proc.returncode, "seconds": seconds, "peak_rss": peak, "stderr": stderr, "capped": capped,
            "timeline": timeline}


def lens_peaks(timeline: list[tuple[float, int]], log: dict) -> dict[str, int]:
    """Peak RSS within each step's window, the windows laid end to end back from the log's
    ``created`` (the lenses run in the order of ``timings``, ``load`` first; ±1 s)."""
    from datetime import datetime

    end = datetime.fromisoformat(log["created"]).timestamp() + 1.0
    steps = [(k, v) for k, v in log["timings"].items() if k != "total"]
    out: dict[str, int] = {}
    for name, secs in reversed(steps):
        start = end - secs - 1.0
        out[name.removeprefix("lens:")] = max((r for t, r in timeline if start <= t <= end), default=0)
        end = start + 1.0
    return dict(reversed(list(out.items())))


def _weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _finished(out: Path) -> list[tuple[str, float, float]]:
    """Lenses a stopped run had finished: ``(name, seconds, finished at)`` from ``.partial``."""
    done = []
    for f in sorted((out / ".partial").glob("*.json")):
        try:
            secs = json.loads(f.read_text())["result"].get("seconds") or 0.0
        except (OSError, ValueError, KeyError):
            continue
        done.append((f.stem, float(secs), f.stat().st_mtime))
    return sorted(done, key=lambda x: x[2])


def _battery() -> str:
    names = {"quantization": "quantization (RTN 4-bit)", "relearn": "relearn (LoRA)"}
    return ", ".join(names.get(x, x) for x in LENSES)


def _capped_row(res: dict, out: Path, label: str, weights: int, idle: dict) -> Row:
    done = _finished(out)
    running = next((x for x in LENSES if x not in {d[0] for d in done}), "?")
    return Row(BENCH, f"{label}; {_battery()}; {N_ITEMS} forget + "
                      f"{N_ITEMS} retain items; B/U/N, --low-memory",
               f"peak RSS > {res['peak_rss'] / GIB:.2f} GiB: stopped at the safety cap during {running} after "
               f"{res['seconds']:.0f} s (one model's weights {weights / GIB:.2f} GiB; Python + torch + audit imported "
               f"{idle['peak_rss'] / GIB:.2f} GiB)", "≤ weights + 2 GiB", False,
               "finished before it: " + (", ".join(f"{n} {s:.0f} s" for n, s, _ in done) or "none"))


def _capped_details(res: dict, out: Path, weights: int) -> list[str]:
    lines = [f"the audit was stopped when its RSS passed the cap ($BENCH_RSS_CAP_GIB, default 55% of RAM): "
             f"{res['peak_rss'] / 2**20:,.0f} MiB, {(res['peak_rss'] - weights) / 2**20:,.0f} MiB over one model's "
             "weights"]
    for n, secs, at in _finished(out):
        peak = max((r for t, r in res["timeline"] if at - secs - 1 <= t <= at + 1), default=0)
        lines.append(f"{n}: {secs:.0f} s, peak RSS {peak / 2**20:,.0f} MiB")
    tail = [x for x in res["stderr"].strip().splitlines() if x.strip()][-3:]
    lines.append("last progress lines: " + " / ".join(tail))
    return lines


def run(quick: bool = False) -> Section:
    sec = Section()
    shape = TINY if quick else LLAMA_32_1B
    label = ("tiny Llama-3.2 architecture (hidden 256, 2 layers; --quick)" if quick
             else "random-init Llama of Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, "
                  "MLP 8192, vocab 128,256, tied)")
    root = Path(tempfile.mkdtemp(prefix="bench-1b-", dir=os.environ.get("BENCH_1B_DIR", "/tmp")))
    try:
        b, u, n = root / "base", root / "unlearned", root / "reference"
        t_build = _build_child(b, shape, 0, None)
        t_build += _build_child(u, shape, 0, b)
        t_build += _build_child(n, shape, 1, None)
        forget, retain = write_items(root)
        cfg, policy = root / "config.yaml", root / "policy.yaml"
        cfg.write_text(json.dumps(CONFIG))  # JSON is YAML
        policy.write_text(POLICY)
        out = root / "out"
        env = {**_env(), "AUDIT_CACHE": str(root / "cache")}
        audit = str(Path(sys.executable).with_name("audit"))
        argv = [audit, "run", "--base", str(b), "--unlearned", str(u), "--reference", str(n),
                "--forget", str(forget), "--retain", str(retain), "--lenses", ",".join(LENSES), "--low-memory",
                "--config", str(cfg), "--policy", str(policy), "--out", str(out), "--seed", "0"]
        shown = " ".join(["audit", *argv[1:]]).replace(str(root), "$DIR")
        idle = measured([sys.executable, "-c", "import torch, transformers, audit.run, probes.relearn"], env, 600)
        res = measured(argv, env, 6 * 3600)
        weights = _weights_bytes(b)
        limit = weights + 2 * GIB
        command = (f"command (BENCH_THREADS={os.environ.get('BENCH_THREADS', '1')} torch threads, fresh "
                   f"$AUDIT_CACHE): `{shown}`, with `$DIR/config.yaml` = `{json.dumps(CONFIG)}` and a policy of "
                   f"`{POLICY.strip()}`")
        built = (f"building the three checkpoints (random init + safetensors, child processes): {t_build:.0f} s, "
                 f"{3 * weights / 2**30:.1f} GiB on disk, deleted afterwards")
        log_file = out / "audit_log.json"
        if res["capped"]:
            sec.rows.append(_capped_row(res, out, label, weights, idle))
            sec.details += [command, *_capped_details(res, out, weights), built]
            return sec
        if res["rc"] not in (0, 1) or not log_file.is_file():
            raise RuntimeError(f"audit run exited {res['rc']}: {res['stderr'].strip().splitlines()[-3:]}")
        log = json.loads(log_file.read_text())
        n_params = log["models"]["base"]["n_params"]
        timings = log["timings"]
        per_lens = ", ".join(f"{k.removeprefix('lens:')} {v:.0f} s" for k, v in timings.items() if k != "total")
        peaks = lens_peaks(res["timeline"], log)
        top = max(peaks, key=lambda k: peaks[k]) if peaks else None
        errors = {k: v["error"] for k, v in log["lenses"].items() if v.get("error")}
        m = re.search(r"low memory: at most (\d+) model\(s\) resident at once; weights read (.*)", res["stderr"])
        resident = f"at most {m[1]} model resident, weights read {m[2].strip()}" if m else "residency not logged"
        relearn = log["lenses"].get("relearn", {}).get("data", {})
        quant = log["lenses"].get("quantization", {}).get("data", {})
        sec.rows.append(Row(
            BENCH, f"{label}: {n_params / 1e9:.2f}B params; {_battery()}; {N_ITEMS} forget + {N_ITEMS} retain items; "
                   "B/U/N, --low-memory",
            f"peak RSS {res['peak_rss'] / GIB:.2f} GiB (one model's weights {weights / GIB:.2f} GiB; Python + torch "
            f"+ audit imported {idle['peak_rss'] / GIB:.2f} GiB); {timings.get('total', res['seconds']) / 60:.1f} min: "
            f"{per_lens}",
            "≤ weights + 2 GiB", res["peak_rss"] <= limit,
            (f"highest during {top} ({peaks[top] / GIB:.2f} GiB); " if top else "")
            + f"{resident}; verdict {log['verdicts'][0]['label'] if log.get('verdicts') else '—'}"
            + (f"; lens errors: {errors}" if errors else "")))
        sec.details += [
            command,
            f"peak RSS {res['peak_rss'] / 2**20:,.0f} MiB vs one model's weights {weights / 2**20:,.0f} MiB "
            f"(+{(res['peak_rss'] - weights) / 2**20:,.0f} MiB; the bound allows +2,048 MiB); a process that only "
            f"imports torch, transformers and the auditor peaks at {idle['peak_rss'] / 2**20:,.0f} MiB",
            "peak RSS per step (sampled every 50 ms, windows from the log's timings, ±1 s): "
            + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in peaks.items()),
            f"wall time of the audit process {res['seconds']:.0f} s; timings from audit_log.json: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
            f"quantization: in place {quant.get('in_place')}; relearn: method {relearn.get('method')}, "
            f"lora {relearn.get('lora')}",
            built,
            resident,
        ]
        return sec
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return sec


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        out_, shape_, seed_, src_ = sys.argv[2:6]
        build(Path(out_), json.loads(shape_), seed=int(seed_), perturb_from=Path(src_) if src_ else None)
    elif len(sys.argv) > 1 and sys.argv[1] == "--measure":
        print(json.dumps(_wrap(int(sys.argv[2]), sys.argv[3:])))
    else:
        quick_ = "--quick" in sys.argv[1:]
        section = run(quick=quick_)
        print(json.dumps({"rows": [r.__dict__ for r in section.rows], "details": section.details}, indent=1))
