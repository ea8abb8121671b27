"""``audit.run``: the one library call behind ``audit run``."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from audit.caveats import NO_REFERENCE, NO_REFERENCE_VERDICT
from audit.config import AuditConfig
from audit.context import AuditContext
from audit.errors import InputError, LensError, one_line
from audit.items import ItemSet, items_hash
from audit.models import Residency, check_compatible, check_context_window, load_model
from audit.policy import Policy, evaluate, load_policy
from audit.prepare import prepare_for_model
from audit.progress import log as logger
from audit.quiet import CaughtWarnings, quiet_warnings
from audit.registry import LensSpec, expand_lenses, get_lens
from audit.resume import PartialStore, lens_key
from audit.schema import AuditLog, ItemSetInfo, LensResult, ModelInfo, write_log
from audit.scoring import candidate_token_ids, encode_items
from audit.sources import load_item_set
from audit.verdict import decide, group_verdicts, retain_utility

_LIBS = ("torch", "transformers", "transformer-lens", "sae-lens", "scikit-learn", "numpy", "plotly", "pydantic")


def _identical_candidates(items: dict[str, list], sets: dict, tokenizer, mode: str) -> dict[str, list]:
    """Items with two candidates that tokenize identically: an error naming them, or dropped with a note.

    No lens can tell such candidates apart (they are the same tokens), so the item could only
    ever read as a tie. Uses the one candidate encoding every lens reads.
    """
    out = {}
    for name, v in items.items():
        bad = []
        for it in v:
            seen: dict[tuple[int, ...], str] = {}
            for c, ids in zip(it.candidates, candidate_token_ids(tokenizer, it), strict=True):
                if tuple(ids) in seen:
                    bad.append((it.id, seen[tuple(ids)], c))
                    break
                seen[tuple(ids)] = c
        if not bad:
            out[name] = v
            continue
        first = ", ".join(f"item '{i}': {a!r} and {b!r}" for i, a, b in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        if mode != "drop":
            raise InputError(f"{len(bad)} {name} item(s) have two candidates that tokenize identically, so no lens can "
                             f"tell them apart ({first}{more}); fix them, or leave them out with "
                             "--identical-candidates drop")
        gone = {i for i, _, _ in bad}
        out[name] = [it for it in v if it.id not in gone]
        if name in sets:
            sets[name].notes.append(f"{len(bad)} item(s) dropped: two of their candidates tokenize identically "
                                    f"({first}{more})")
        logger.warning("%d %s item(s) dropped: two of their candidates tokenize identically", len(bad), name)
    return out


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["unlearning-audit"] = metadata.version("unlearning-audit")
    except metadata.PackageNotFoundError:
        pass
    return out


def _groups(items) -> dict[str, list[str]]:
    """Concept groups of the forget set: by attribute, and by subject where subjects have ≥ 10 items."""
    out: dict[str, list[str]] = {}
    for key in ("attribute", "subject"):
        by: dict[str, list[str]] = {}
        for it in items:
            v = getattr(it, key)
            if v is not None:
                by.setdefault(v, []).append(it.id)
        if len(by) > 1 and (key == "attribute" or min(len(v) for v in by.values()) >= 10):
            out.update({f"{key}={k}": v for k, v in sorted(by.items())})
    return out


def load_items(config: AuditConfig) -> tuple[dict[str, ItemSet], dict[str, list]]:
    """The forget and retain item sets as read, and their items cut to ``max_items``."""
    sets = {k: load_item_set(getattr(config, k), config.format, role=k, qa_template=config.qa_template,
                             mc_mode=config.mc_mode, seed=config.seed) for k in ("forget", "retain")}
    items = {k: s.items for k, s in sets.items()}
    # a dataset folder or hub dataset named for both, whose forget and retain read the same split
    # (check_config compares files only: these resolve to their rows here)
    pairs = {k: {(it.prompt, it.answer) for it in v} for k, v in items.items()}
    if pairs["forget"] == pairs["retain"]:
        where = {k: s.source + (f" (split {s.split})" if s.split else "") for k, s in sets.items()}
        raise InputError(f"--forget ({where['forget']}) and --retain ({where['retain']}) read the same items; the "
                         "retain set must be facts the unlearning was meant to keep (name each one's split, "
                         "e.g. org/name:CONFIG:SPLIT)")
    if config.max_items:
        items = {k: v[: config.max_items] for k, v in items.items()}
    return sets, items


def model_paths(config: AuditConfig) -> dict[str, str]:
    """Each model role and its checkpoint: base, unlearned, reference, reference_2, ..."""
    paths = {"base": config.base, "unlearned": config.unlearned}
    for i, ref in enumerate(config.references):
        paths["reference" if i == 0 else f"reference_{i + 1}"] = ref
    return paths


def run(config: AuditConfig, *, policy: Policy | None = None,
        on_log_written: Callable[[Path], None] | None = None) -> AuditLog:
    """Audit one (base, unlearned, reference) triple on a forget and a retain set.

    Writes ``audit_log.json`` into ``config.out`` and returns the log. Library warnings
    raised meanwhile are not printed: each distinct one is in the log's ``notes`` once,
    with its count (:mod:`audit.quiet`).

    Args:
        config: the resolved configuration.
        policy: the policy to apply (default: ``config.policy`` read from disk).
        on_log_written: called with the path of ``audit_log.json`` once it is written, before
            the ``.partial`` lens checkpoints are removed (``cli.py`` renders ``report.html``
            here; this library never imports ``reports``).

    Raises:
        InputError: bad checkpoints, items, lens names or options (nothing is written).
        KeyboardInterrupt: nothing is written; finished lenses stay in ``.partial`` for
            ``resume``.
        Exception: anything else that stops the run once its inputs are checked is
            re-raised after ``audit_log.json`` is written with ``status="error"``, the
            error on one line, and the lenses finished before it.
    """
    with quiet_warnings() as caught:
        return _run(config, on_log_written=on_log_written, policy=policy, caught=caught)


class _Progress:
    """What a run has made so far, for the error log of a run that stops."""

    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.sets: dict[str, ItemSet] = {}
        self.items: dict[str, list] = {}
        self.results: dict[str, LensResult] = {}
        self.timings: dict[str, float] = {}


def _make_log(config: AuditConfig, policy: Policy, p: _Progress, **fields: Any) -> AuditLog:
    import torch

    return AuditLog(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=config.model_dump(),
        models={r: ModelInfo(**m.info()) for r, m in p.models.items()},
        items={k: ItemSetInfo(path=str(getattr(config, k)), hash=items_hash(v), n_items=len(v),
                              **p.sets[k].info()) for k, v in p.items.items() if k in p.sets},
        lenses=p.results,
        timings={k: round(v, 3) for k, v in p.timings.items()},
        versions=library_versions(),
        policy=policy.model_dump(),
        environment={"device": config.device, "dtype": config.dtype, "seed": config.seed,
                     "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        **fields,
    )


def _write_error_log(config: AuditConfig, policy: Policy, p: _Progress, caught: CaughtWarnings,
                     e: Exception) -> None:
    """Write ``audit_log.json`` with ``status="error"``; never raises (the caller re-raises ``e``)."""
    try:
        log = _make_log(config, policy, p, status="error", error=one_line(f"{type(e).__name__}: {e}"))
        log.notes += caught.notes()
        target = Path(config.out) / "audit_log.json"
        if target.is_file():  # an earlier run's results are kept, never lost to this one's error
            target.replace(target.with_name("audit_log.previous.json"))
            log.notes.append("the earlier audit_log.json of this folder was moved to audit_log.previous.json")
        write_log(log, target)
    except Exception as e2:  # noqa: BLE001 - the run's own error is what the caller must see
        logger.warning("could not write the error log: %s: %s", type(e2).__name__, e2)


def _run(config: AuditConfig, *, on_log_written: Callable[[Path], None] | None, policy: Policy | None,
         caught: CaughtWarnings) -> AuditLog:
    import torch

    t0 = time.perf_counter()
    policy = policy or load_policy(config.policy)
    specs = [get_lens(name) for name in expand_lenses(config.lenses)]
    lens_cfgs = {}
    for spec in specs:
        opts = dict(config.lens_options.get(spec.name) or {})
        if "side_effect_tolerance" in spec.config_cls.model_fields:
            opts.setdefault("side_effect_tolerance", policy.side_effect_tolerance)
        lens_cfgs[spec.name] = spec.make_config(opts)
    unknown = set(config.lens_options) - {s.name for s in specs}
    if unknown:
        logger.warning("options given for lenses that are not run: %s", ", ".join(sorted(unknown)))

    sets, items = load_items(config)
    if len(items["forget"]) < policy.min_items:
        raise InputError(
            f"the forget set has {len(items['forget'])} items; the policy requires at least {policy.min_items} "
            "(set min_items in a policy file to change it)"
        )
    torch.manual_seed(config.seed)
    progress = _Progress()
    progress.sets, progress.items = sets, items
    try:
        log = _audit(config, policy, specs, lens_cfgs, progress, t0)
        log.notes += caught.notes()
        path = write_log(log, Path(config.out) / "audit_log.json")
    except InputError:
        raise  # bad input: nothing is written
    except Exception as e:
        # an error no lens caught (a bug, a full disk, a model that fails to load): the log
        # says so, with the lenses that finished; their checkpoints stay for --resume
        _write_error_log(config, policy, progress, caught, e)
        raise
    if on_log_written is not None:
        on_log_written(path)
    PartialStore(config.out).clear()
    return log


def _audit(config: AuditConfig, policy: Policy, specs: list[LensSpec], lens_cfgs: dict[str, Any],
           p: _Progress, t0: float) -> AuditLog:
    """Load the models, run the lenses and decide; ``p`` holds what is made as it is made."""
    sets, items, timings = p.sets, p.items, p.timings
    t = time.perf_counter()
    residency = Residency(config.low_memory)
    for role, path in model_paths(config).items():
        if path is not None:
            p.models[role] = load_model(path, role, device=config.device, dtype=config.dtype,
                                        allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
                                        residency=residency)
    models = p.models
    check_compatible(list(models.values()))
    # chat-template wrapping and dropping what the base never knew both need the base model
    items = prepare_for_model(sets, items, models["base"], chat_template=config.chat_template,
                              drop_unknown=config.drop_unknown, batch_size=config.batch_size)
    if config.drop_unknown and len(items["forget"]) < policy.min_items:
        raise InputError(
            f"the forget set has {len(items['forget'])} items the base model knows "
            f"({sets['forget'].n_dropped} dropped); the policy requires at least {policy.min_items}"
        )
    for v in items.values():
        encode_items(models["base"].tokenizer, v)  # an answer that tokenizes to nothing fails here
    items = _identical_candidates(items, sets, models["base"].tokenizer, config.identical_candidates)
    if len(items["forget"]) < policy.min_items:
        raise InputError(f"the forget set has {len(items['forget'])} items left after dropping items whose candidates "
                         f"tokenize identically; the policy requires at least {policy.min_items}")
    check_context_window(models["base"], items, reserve=2)  # a prompt longer than the model's window
    p.items = items
    timings["load"] = time.perf_counter() - t

    ctx = AuditContext(config, models, items)
    results = p.results
    # each finished lens is checkpointed, so an interrupted run can go on with --resume
    store = PartialStore(config.out)
    key_parts = ({r: m.hash for r, m in models.items()}, {k: items_hash(v) for k, v in items.items()},
                 {"seed": config.seed, "dtype": config.dtype, "device": config.device, "min_power": config.min_power})
    for spec in specs:
        key = lens_key(spec.name, lens_cfgs[spec.name].model_dump(mode="json"), *key_parts)
        saved = store.load(spec.name, key, spec.version) if config.resume else None
        if saved is not None:
            try:
                spec.check_data(saved)
            except ValueError as e:
                logger.warning("lens %s: saved result does not fit the lens's data model (%s); recomputing",
                               spec.name, e)
                saved = None
        if saved is not None:
            logger.info("resumed lens %s (completed in an earlier run with the same inputs)", spec.name)
            results[spec.name] = saved
            timings[f"lens:{spec.name}"] = saved.seconds
            continue
        t = time.perf_counter()
        try:
            res = spec.fn(ctx, lens_cfgs[spec.name])
            # what the lens wrote must fit its data model, so the verdict and the report can read
            # it; a result that does not is a bug, recorded as the lens's error
            extra = spec.check_data(res)
            if extra:
                logger.warning("lens %s wrote keys its data model does not declare: %s", spec.name, ", ".join(extra))
        except LensError as e:
            res = LensResult(name=spec.name, config=lens_cfgs[spec.name].model_dump(), error=str(e))
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure inside a lens (scikit-learn, sae-lens, torch)
            # becomes that lens's error; the run goes on and the verdict names the failure
            logger.warning("lens %s failed: %s: %s", spec.name, type(e).__name__, e)
            res = LensResult(name=spec.name, config=lens_cfgs[spec.name].model_dump(),
                             error=f"{type(e).__name__} inside the lens: {e}")
        res.seconds = round(time.perf_counter() - t, 3)
        res.lens_version = spec.version
        if res.error is None:  # a failed lens is retried on resume
            store.save(spec.name, key, res)
        results[spec.name] = res
        timings[f"lens:{spec.name}"] = res.seconds

    if config.low_memory:
        logger.info("low memory: at most %d model(s) resident at once; weights read %s", residency.peak,
                    ", ".join(f"{r} {n}×" for r, n in residency.loads.items()))
    th = policy.thresholds
    null = dict(zip([it.id for it in items["forget"]], ctx.null("forget").tolist(), strict=True))
    subjects = {it.id: it.subject for it in items["forget"]}
    verdicts = [decide(results, th)]
    verdicts += group_verdicts(results, _groups(items["forget"]), null, th, config.min_power, config.seed,
                               clusters=subjects)
    if not ctx.has_reference:
        for verdict in verdicts:
            if NO_REFERENCE not in verdict.reason:  # DELETED's blockers say it already
                verdict.reason += f" ({NO_REFERENCE}: {NO_REFERENCE_VERDICT}, and this verdict is weaker)"
    timings["total"] = time.perf_counter() - t0
    log = _make_log(config, policy, p, verdicts=verdicts, retain_utility=retain_utility(results, th))
    log.policy_result = evaluate(log, policy)
    return log
