"""``audit sweep``: many audits from one manifest, scheduled by Ray, summarised as a zoo.

A manifest (YAML, or JSONL with one audit per line) lists audits: each an ordinary
``audit run`` (:class:`~audit.config.AuditConfig`) with a ``name`` and, optionally, a
``method`` and ``params`` that group it in the zoo report; a ``defaults`` mapping holds
what the audits share::

    defaults: {base: B, reference: N, forget: f.jsonl, retain: r.jsonl, lenses: [behavior]}
    audits:
      - {name: npo_lr1e-5, unlearned: U1}
      - {name: rmu_alpha100, unlearned: U2, policy: strict.yaml}

Each audit runs as one Ray task calling :func:`audit.run.run`, and its ``audit_log.json``
lands in ``OUT/<name>/``. A local Ray instance is started unless ``address`` names a
cluster to join. Each task asks Ray for the CPUs, host memory and (on ``cuda``) the share
of a GPU that ``audit plan`` (:mod:`audit.plan`) estimates for it, so audits pack onto the
machines. A finished audit is never run again (its log is read back when it still matches
its inputs, see :func:`finished_log`); an audit that was stopped part-way continues from
its finished lenses (``AuditConfig.resume``). An audit that fails is recorded as failed and
the sweep goes on. ``OUT/sweep.json`` holds one row per audit, in manifest order
(``reports.sweep`` renders ``sweep.html`` from it alone).

Models are not shared between audits: :func:`audit.run.run` loads its own checkpoints and
takes no preloaded models. What consecutive audits of one base do share is on disk (the
base's scores and activations cached under ``$AUDIT_CACHE`` by content hash) and the
worker process itself (its imports): Ray keeps a CPU worker process for the next task.
Audits are submitted grouped by base so that they tend to follow one another.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from audit.atomic import atomic_write_text
from audit.config import AuditConfig, check_config
from audit.errors import InputError, one_line, validate
from audit.progress import log, progress
from audit.schema import AuditLog, read_log

SWEEP_VERSION = 1
"""Version of ``sweep.json``."""
STOP_AFTER_ENV = "AUDIT_SWEEP_STOP_AFTER"
"""Test hook: stop the sweep as Ctrl-C would once this many audits have finished in this session."""
OBJECT_STORE_BYTES = 256 << 20
"""Object store of a local Ray instance: tasks pass only small dicts, so Ray's default
(30% of RAM, in /dev/shm) is never needed."""
SET_BY_SWEEP = ("out", "resume")
"""Config fields the sweep sets itself: ``OUT/<name>``, and resume on."""
# config fields that change no plan (what is loaded, how many passes, how much memory)
_NOT_PLANNED = ("unlearned", "out", "resume", "seed", "policy", "cache_dir")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepEntry(BaseModel):
    """One audit of a manifest: its name, how the zoo groups it, and its ``audit run`` config."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Folder name under ``OUT`` (letters, digits, ``.``, ``_``, ``-``)."""
    method: str | None = None
    """The unlearning method, for grouping (default: the name up to its first ``_``)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """The method's settings, shown beside it (e.g. ``{lr: 1e-5}``)."""
    config: AuditConfig
    """The audit, as ``audit run`` takes it (``out`` set to ``OUT/<name>``)."""

    @property
    def group(self) -> str:
        return self.method or self.name.split("_", 1)[0]


# ------------------------------------------------------------------ the manifest


def _read_entries(path: Path) -> tuple[dict[str, Any], list[Any]]:
    """The manifest's defaults and raw audit entries (YAML, or JSONL by suffix)."""
    from audit.yamlio import read_yaml

    if path.suffix.lower() == ".jsonl":
        if not path.is_file():
            raise InputError(f"manifest not found: {path}")
        defaults: dict[str, Any] = {}
        audits: list[Any] = []
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read manifest {path}: {e}") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise InputError(f"manifest {path}:{i}: not JSON ({e})") from None
            if isinstance(obj, dict) and set(obj) == {"defaults"}:
                if audits or defaults:
                    raise InputError(f"manifest {path}:{i}: a defaults line must come first, once")
                defaults = obj["defaults"]
                if not isinstance(defaults, dict):
                    raise InputError(f"manifest {path}:{i}: 'defaults' must be a mapping of audit options")
                continue
            audits.append(obj)
        return defaults, audits
    data = read_yaml(path, "manifest")
    if isinstance(data, list):
        return {}, data
    if not isinstance(data, dict):
        raise InputError(f"manifest {path} must hold a mapping with 'audits' (a list) and optional 'defaults'")
    unknown = set(data) - {"defaults", "audits"}
    if unknown:
        raise InputError(f"manifest {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                         "a manifest holds 'defaults' and 'audits'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InputError(f"manifest {path}: 'defaults' must be a mapping of audit options")
    listed = data.get("audits")
    if not isinstance(listed, list):
        raise InputError(f"manifest {path}: 'audits' must be a list of audits, each with a name")
    return defaults, listed


def _absolute(value: Any) -> Any:
    """A path that exists here, made absolute (Ray workers may start elsewhere); anything else
    (a hub ID, a list of references) as given, or each item of a list so."""
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


def load_manifest(path: str | Path, out: str | Path) -> list[SweepEntry]:
    """Read and check a sweep manifest: every audit's config is checked as ``audit run`` checks
    it (checkpoints, items, lenses, policy, output folder) before anything runs.

    Paths are read relative to the current folder, as ``audit run --config`` reads them, and
    made absolute. A ``lenses`` value may be a list or a comma-separated string.

    Raises:
        InputError: naming the manifest, the audit and what is wrong.
    """
    path, out = Path(path), Path(out)
    defaults, raw = _read_entries(path)
    if not raw:
        raise InputError(f"manifest {path} lists no audits")
    entries: list[SweepEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw, 1):
        where = f"manifest {path}, audit {i}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: must be a mapping with a name and audit options")
        merged = {**defaults, **item}
        name = merged.pop("name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"{where}: 'name' must be a folder name (letters, digits, '.', '_', '-'), not {name!r}")
        where = f"manifest {path}, audit '{name}'"
        if name in seen:
            raise InputError(f"{where}: the name is used twice; each audit needs its own folder")
        seen.add(name)
        for key in SET_BY_SWEEP:
            if key in merged:
                raise InputError(f"{where}: '{key}' is set by the sweep (OUT/<name>, resumed); leave it out")
        method, params = merged.pop("method", None), merged.pop("params", None) or {}
        if isinstance(merged.get("lenses"), str):
            merged["lenses"] = [x.strip() for x in merged["lenses"].split(",") if x.strip()]
        for key in ("base", "unlearned", "reference", "forget", "retain", "policy"):
            if key in merged:
                merged[key] = _absolute(merged[key])
        cfg = validate(AuditConfig, {**merged, "out": str((out / name).resolve()), "resume": True}, "option", where)
        if re.fullmatch(r"cuda:\d+", cfg.device):
            raise InputError(f"{where}: device '{cfg.device}': in a sweep give 'cuda' (Ray assigns each audit its GPU)")
        try:
            # the driver may have no GPU (a cluster's head): a cuda audit's device is checked where it runs
            check_config(cfg.model_copy(update={"device": "cpu"}) if cfg.device.startswith("cuda") else cfg)
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        entries.append(validate(SweepEntry, {"name": name, "method": method, "params": params, "config": cfg},
                                "key", where))
    return entries


# ------------------------------------------------------------- finished audits


_RESOURCE_FIELDS = ("out", "batch_size", "cache_dir", "resume", "low_memory")
"""AuditConfig fields that change no result."""


def _plain(d: Any) -> Any:
    # through JSON, so a dumped model and one read back from a log compare alike (tuples, 1 vs 1.0)
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def stale_reason(cfg: AuditConfig, log_: AuditLog) -> str | None:
    """Why ``log_`` is not what ``run(cfg)`` would produce now (None: it is).

    Compared: every setting but :data:`_RESOURCE_FIELDS`, each checkpoint's content hash,
    the forget and retain items as loaded, the policy, the package version and each lens's
    code version.
    """
    from audit.items import items_hash
    from audit.models import content_hash
    from audit.policy import load_policy
    from audit.registry import available_lenses
    from audit.run import library_versions, load_items, model_paths

    if log_.status != "success" or log_.error is not None or not log_.verdicts:
        return "it did not finish"

    def settings(c: dict[str, Any]) -> Any:
        return _plain({k: v for k, v in c.items() if k not in _RESOURCE_FIELDS})

    if settings(log_.config) != settings(cfg.model_dump(mode="json")):
        return "its settings differ"
    paths = model_paths(cfg)
    if set(log_.models) != set(paths) or any(content_hash(p) != log_.models[r].hash for r, p in paths.items()):
        return "a checkpoint changed"
    for k, its in load_items(cfg)[1].items():
        if k not in log_.items or items_hash(its) != log_.items[k].hash:
            return f"the {k} items changed"
    if _plain(log_.policy) != _plain(load_policy(cfg.policy).model_dump()):
        return "the policy changed"
    if log_.versions.get("unlearning-audit") != library_versions().get("unlearning-audit"):
        return "it was made by another version of the auditor"
    lenses = available_lenses()
    for name, res in log_.lenses.items():
        if name in lenses and res.lens_version != lenses[name].version:
            return f"lens {name} changed (version {res.lens_version}, now {lenses[name].version})"
    return None


def finished_log(cfg: AuditConfig) -> AuditLog | None:
    """The finished ``audit_log.json`` in ``cfg.out``, if :func:`stale_reason` finds nothing against it."""
    p = Path(cfg.out) / "audit_log.json"
    if not p.is_file():
        return None
    try:
        lg = read_log(p)
        why = stale_reason(cfg, lg)
    except (InputError, OSError) as e:
        why = str(e)
    if why is not None:
        log.info("%s: the earlier audit is not reused (%s); auditing again", cfg.out, why)
        return None
    return lg


# ------------------------------------------------------------------- the rows


def _lens_recovery(res: Any) -> float | None:
    """A lens's largest informative recovery that may show or bound hidden knowledge (primary
    and scan readings, side effects within tolerance); None if it has none."""
    if res.error:
        return None
    vals = [r.value for r in res.recoveries if r.informative and r.kind in ("primary", "scan")
            and math.isfinite(r.value) and r.side_effect_ok is not False]
    return float(max(vals)) if vals else None


def row_from_log(entry: SweepEntry, lg: AuditLog) -> dict[str, Any]:
    """The zoo's row of one finished audit (read from its log alone)."""
    v = lg.verdicts[0]
    ev = v.evidence[0] if v.evidence else None
    out = Path(entry.config.out)
    return {
        "name": entry.name, "method": entry.group, "params": entry.params, "status": "done",
        "label": v.label, "deletion_score": v.deletion_score, "reason": v.reason,
        "evidence": None if ev is None else ev.model_dump(),
        "retain": lg.retain_utility,
        "recovery": {k: _lens_recovery(r) for k, r in lg.lenses.items()},
        "lens_errors": {k: r.error for k, r in lg.lenses.items() if r.error},
        "policy_passed": bool(lg.policy_result.get("passed")),
        "seconds": lg.timings.get("total"),
        "log": str(out / "audit_log.json"), "report": str(out / "report.html"), "error": None,
    }


def failed_row(entry: SweepEntry, error: str) -> dict[str, Any]:
    out = Path(entry.config.out)
    return {"name": entry.name, "method": entry.group, "params": entry.params, "status": "failed",
            "label": None, "deletion_score": None, "reason": None, "evidence": None, "retain": {},
            "recovery": {}, "lens_errors": {}, "policy_passed": False, "seconds": None,
            "log": str(out / "audit_log.json"), "report": None, "error": one_line(error)}


# --------------------------------------------------------------- Ray tasks


def _worker() -> str:
    import ray

    where = f"{ray.util.get_node_ip_address()} pid {os.getpid()}"
    gpus = ray.get_gpu_ids()
    return where + (f" gpu {','.join(map(str, gpus))}" if gpus else "")


def _threads(n: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, n))
    threadpool_limits(max(1, n))


def _plan_peak(cfg: AuditConfig) -> dict[str, int] | None:
    """Peak bytes per device of one audit: ``audit plan`` without the timing, run here on the
    CPU (loads B's weights once; the machine may have no GPU), its memory then put on the
    audit's own device. None, with a warning, where it fails: an estimate never stops a sweep."""
    from audit.plan import make_plan, peak_memory

    try:
        plan = make_plan(cfg.model_copy(update={"device": "cpu", "resume": False}), measure=False)
    except Exception as e:  # noqa: BLE001
        log.warning("sweep: no resource estimate for %s (%s); asking for the defaults", cfg.out,
                    one_line(f"{type(e).__name__}: {e}"))
        return None
    return peak_memory(replace(plan.inputs, device=cfg.device), plan.rows)


def _audit_task(name: str, config: dict[str, Any], threads: int, board: Any,
                on_log_written: Callable[[Path], None] | None) -> dict[str, Any]:
    """Run one audit on a worker; a failure is returned, never raised. ``import_s``: the imports
    (seconds on a fresh worker, none on one that ran an audit before); ``seconds``: the audit."""
    t0 = time.perf_counter()
    from audit.progress import set_progress
    from audit.run import run

    where = _worker()
    board.started.remote(name, where)
    set_progress(False)
    _threads(threads)
    t = time.perf_counter()
    try:
        run(AuditConfig.model_validate(config), on_log_written=on_log_written)
    except Exception as e:  # noqa: BLE001 - one failed audit is recorded; the sweep goes on
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "worker": where, "import_s": t - t0,
                "seconds": time.perf_counter() - t}
    return {"status": "done", "worker": where, "import_s": t - t0, "seconds": time.perf_counter() - t}


class _Board:
    """Which audits have started, and where (a Ray actor the tasks tell, the driver reads)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, name: str, where: str) -> None:
        self.events.append((name, where))

    def drain(self) -> list[tuple[str, str]]:
        out, self.events = self.events, []
        return out


# ---------------------------------------------------------------- resources


def _gpu_bytes() -> int | None:
    """Memory of one GPU as this machine sees it (None: no GPU here)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)


def _request(cfg: AuditConfig, peak: dict[str, int] | None, cpus: float, gpu_bytes: int | None,
             max_memory: float | None) -> dict[str, Any]:
    """Ray options of one audit: CPUs, host memory and a share of a GPU from its plan."""
    opts: dict[str, Any] = {"num_cpus": cpus}
    if peak and peak.get("cpu") and max_memory:
        opts["memory"] = int(min(peak["cpu"], max_memory))
    if cfg.device.startswith("cuda"):
        dev = next((b for d, b in (peak or {}).items() if d != "cpu"), None)
        if dev is None or not gpu_bytes:
            opts["num_gpus"] = 1
        else:  # in twentieths of a GPU, so shares add up exactly
            opts["num_gpus"] = min(1.0, math.ceil(20 * dev / gpu_bytes) / 20)
    return opts


def _plan_key(cfg: AuditConfig) -> str:
    return json.dumps({k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_PLANNED},
                      sort_keys=True, default=str)


# ------------------------------------------------------------------- the sweep


def _start_ray(address: str | None, num_cpus: int | None, *, log_to_driver: bool = False) -> bool:
    """Join the cluster at ``address``, or start a local instance; True if started here."""
    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": log_to_driver,
                          "configure_logging": True}
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(f"cannot join the Ray cluster at {address}: {one_line(str(e))}") from None
        return True
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, **kw)
    return True


def ray_map(fn: Callable[..., Any], calls: list[tuple[Any, ...]], *, cpus_per_call: float,
            num_cpus: int | None = None, address: str | None = None) -> list[Any]:
    """``[fn(*c) for c in calls]``, each call a Ray task asking for ``cpus_per_call`` CPUs, on
    the engine ``audit sweep`` uses (a local instance started and stopped here, or the
    cluster at ``address``); results in the order of ``calls``. Workers' output reaches
    this process's terminal. ``audit calibrate --jobs N`` runs its suites through it."""
    import ray

    started = _start_ray(address, num_cpus, log_to_driver=True)
    try:
        task = ray.remote(fn).options(num_cpus=cpus_per_call, max_retries=0)
        return ray.get([task.remote(*c) for c in calls])
    finally:
        if started:
            ray.shutdown()


def sweep(
    manifest: str | Path, out: str | Path, *, address: str | None = None, num_cpus: int | None = None,
    cpus_per_audit: float = 1, gpu_memory: float | None = None, stop_after: int | None = None,
    on_log_written: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Run every audit of ``manifest`` on Ray; write and return ``OUT/sweep.json``'s content.

    Args:
        manifest: the manifest file (YAML, or ``.jsonl``).
        out: the sweep's folder: ``OUT/<name>/audit_log.json`` per audit, ``OUT/sweep.json``.
        address: a Ray cluster to join (``ray start --head`` prints it; ``auto``: the one
            started on this machine); None: a local instance is started and stopped here.
        num_cpus: CPUs of the local instance (default: this machine's).
        cpus_per_audit: CPUs each audit asks for (its torch threads).
        gpu_memory: bytes of one GPU, to turn a ``cuda`` audit's planned memory into a share of
            a GPU (default: this machine's first GPU; without one, each cuda audit takes a whole GPU).
        stop_after: stop as Ctrl-C would (``KeyboardInterrupt``) once this many audits have
            finished in this session (a test hook; default ``$AUDIT_SWEEP_STOP_AFTER``).
        on_log_written: called on the worker with each ``audit_log.json`` once written (``cli.py``
            renders ``report.html`` there), and here for a finished audit whose report is missing.

    Returns:
        ``{"version", "created", "manifest", "out", "rows", "session", ...}``: one row per audit in
        manifest order (see :func:`row_from_log`; a failed audit's row has ``status: failed`` and
        its ``error``); ``session`` says which audits ran, which were read back and where each ran.

    Raises:
        InputError: a bad manifest (nothing runs), or a cluster that cannot be joined.
        KeyboardInterrupt: stopped; finished audits are kept and a rerun resumes.
    """
    import ray

    t0 = time.perf_counter()
    out = Path(out)
    entries = load_manifest(manifest, out)
    if cpus_per_audit <= 0:
        raise InputError(f"--cpus-per-audit must be positive, not {cpus_per_audit}")
    if stop_after is None and os.environ.get(STOP_AFTER_ENV):
        stop_after = int(os.environ[STOP_AFTER_ENV])
    reused: dict[str, AuditLog] = {}
    for en in entries:
        lg = finished_log(en.config)
        if lg is not None:
            reused[en.name] = lg
            if on_log_written is not None and not (Path(en.config.out) / "report.html").is_file():
                on_log_written(Path(en.config.out) / "audit_log.json")
    todo = [en for en in entries if en.name not in reused]
    log.info("sweep %s: %d audit(s), %d finished earlier (read back), %d to run", out, len(entries), len(reused),
             len(todo))
    outcomes: dict[str, dict[str, Any]] = {}
    started_here = False
    engine: dict[str, Any] = {"ray": ray.__version__, "address": address}
    t_ray = time.perf_counter()
    try:
        if todo:
            started_here = _start_ray(address, num_cpus)
            engine["start_s"] = round(time.perf_counter() - t_ray, 2)
            engine["resources"] = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
            _run_all(todo, outcomes, engine, cpus_per_audit, gpu_memory, stop_after, on_log_written,
                     len(entries), len(reused))
    finally:
        if started_here:
            t = time.perf_counter()
            ray.shutdown()
            engine["shutdown_s"] = round(time.perf_counter() - t, 2)
    rows = []
    for en in entries:
        if en.name in reused:
            rows.append(row_from_log(en, reused[en.name]))
        elif outcomes[en.name]["status"] == "failed":
            rows.append(failed_row(en, outcomes[en.name]["error"]))
        else:
            try:
                rows.append(row_from_log(en, read_log(Path(en.config.out) / "audit_log.json")))
            except InputError as e:  # the task said done but left no readable log (no shared folder?)
                rows.append(failed_row(en, f"no readable audit_log.json after the audit finished: {e}"))
    result = {
        "version": SWEEP_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest": str(Path(manifest).resolve()),
        "out": str(out.resolve()),
        "rows": rows,
        "session": {
            "reused": [en.name for en in entries if en.name in reused],
            "ran": [en.name for en in todo],
            "workers": {k: v.get("worker") for k, v in outcomes.items()},
            "audit_s": {k: round(v["seconds"], 2) for k, v in outcomes.items() if v.get("seconds") is not None},
            "import_s": {k: round(v["import_s"], 2) for k, v in outcomes.items() if v.get("import_s") is not None},
            "resources": {k: v.get("resources") for k, v in outcomes.items()},
        },
        "engine": engine,
        "total_s": round(time.perf_counter() - t0, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    result = _finite(result)
    atomic_write_text(out / "sweep.json", json.dumps(result, indent=2, allow_nan=False))
    return result


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float as None (``sweep.json`` is strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _run_all(todo: list[SweepEntry], outcomes: dict[str, dict[str, Any]], engine: dict[str, Any],
             cpus: float, gpu_memory: float | None, stop_after: int | None,
             on_log_written: Callable[[Path], None] | None, n_all: int, n_done: int) -> None:
    """Plan, submit and follow the audits of ``todo``; fills ``outcomes`` as they end."""
    import ray

    audit_fn = ray.remote(_audit_task)
    board: Any = ray.remote(_Board).options(num_cpus=0).remote()
    max_memory = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0) or None
    gpu_bytes = int(gpu_memory) if gpu_memory else (_gpu_bytes() if any(
        en.config.device.startswith("cuda") for en in todo) else None)
    t = time.perf_counter()
    keys = {en.name: _plan_key(en.config) for en in todo}
    plans: dict[str, dict[str, int] | None] = {}
    for en in todo:  # one plan per distinct (base, items, lenses, settings)
        if keys[en.name] not in plans:
            plans[keys[en.name]] = _plan_peak(en.config)
    engine["plan_s"] = round(time.perf_counter() - t, 2)
    pending: dict[Any, SweepEntry] = {}
    # grouped by base, so audits of one base tend to follow one another on a worker
    for en in sorted(todo, key=lambda x: x.config.base):
        opts = _request(en.config, plans[keys[en.name]], cpus, gpu_bytes, max_memory)
        outcomes[en.name] = {"status": "queued", "resources": opts}
        ref = audit_fn.options(max_retries=0, **opts).remote(
            en.name, en.config.model_dump(mode="json"), max(1, int(cpus)), board, on_log_written)
        pending[ref] = en
        log.info("%s: queued (%s)", en.name, ", ".join(f"{k} {_fmt_res(k, v)}" for k, v in opts.items()))
    finished = 0
    try:
        with progress(f"sweep: {n_all} audits", total=n_all) as bar:
            bar.advance(n_done)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for name, where in ray.get(board.drain.remote()):
                    if outcomes[name]["status"] == "queued":  # a start told after the end is old news
                        outcomes[name].update(status="running", worker=where)
                        _status(bar, f"{name}: running on {where}")
                for ref in ready:
                    en = pending.pop(ref)
                    try:
                        res = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker died (out of memory, killed)
                        res = {"status": "failed", "error": f"{type(e).__name__}: {one_line(str(e), 300)}"}
                    outcomes[en.name].update(res)
                    if res["status"] == "done":
                        _status(bar, f"{en.name}: done in {res['seconds']:.1f}s on {res.get('worker')}")
                    else:
                        _status(bar, f"{en.name}: failed: {one_line(res['error'], 300)}", warn=True)
                    bar.advance()
                    finished += 1
                    if stop_after is not None and finished >= stop_after and pending:
                        log.warning("sweep: stopping after %d audit(s) (%s)", finished, STOP_AFTER_ENV)
                        raise KeyboardInterrupt
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _status(bar: Any, msg: str, warn: bool = False) -> None:
    """A per-audit status line: above the sweep's bar in a terminal (a log line written beside a
    live rich bar would be drawn over), else a log line."""
    rich = getattr(bar, "_rich", None)
    if rich is not None:
        from rich.text import Text

        rich[0].console.print(Text(msg, style="yellow" if warn else "dim"))
    elif warn:
        log.warning("%s", msg)
    else:
        log.info("%s", msg)


def _fmt_res(k: str, v: float) -> str:
    return f"{v / 2**30:.2f} GiB" if k == "memory" else f"{v:g}"
