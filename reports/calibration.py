"""The calibration report: rendered from ``calibration.json`` only (no model, no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from audit.atomic import atomic_write_text
from audit.errors import InputError
from reports.fmt import num, pct
from reports.render import LABEL_COLORS, Page, e

TRUTHS = ("DELETED", "SUPPRESSED", "NOT_UNLEARNED")
LABELS = ("DELETED", "SUPPRESSED", "NOT_UNLEARNED", "INCONCLUSIVE")


SOURCES = {
    "construction": ("Truth from the construction alone",
                     "DELETED (never-trained models, the lineage reference) and SUPPRESSED (constructions "
                     "whose behaviour did drop): the construction guarantees the label."),
    "behaviour": ("Truth measured from behaviour",
                  "NOT_UNLEARNED: the no-op, and constructions that stopped short of unlearning behaviour. "
                  "The label comes from SPEC §5's behaviour rule on the same items and N that the verdict "
                  "uses, so a match here is close to guaranteed and says little about the other lenses."),
}


def _matrix(s: dict[str, Any], truths: tuple[str, ...] = TRUTHS) -> str:
    head = "".join(f"<th>{lab}</th>" for lab in LABELS)
    rows = ""
    for t in truths:
        cells = ""
        for lab in LABELS:
            n = s["confusion"][t][lab]
            style = " style='background:#fdd'" if n and t == "SUPPRESSED" and lab == "DELETED" else \
                (" style='background:#dfd'" if n and t == lab else "")
            cells += f"<td{style}>{n}</td>"
        rows += f"<tr><th>{t}</th>{cells}</tr>"
    return f"<table><tr><th>truth \\ verdict</th>{head}</tr>{rows}</table>"


def _by_source(s: dict[str, Any]) -> str:
    """The rows of each truth source apart: their own confusion matrix and counts."""
    by = s.get("by_truth_source")
    if not by:
        return ""
    html = "<h3>By source of the truth label</h3>"
    for src, (title, what) in SOURCES.items():
        t = by.get(src)
        if not t or not t["n_construction"]:
            continue
        truths = tuple(x for x in TRUTHS if any(t["confusion"][x].values()))
        html += (f"<h4>{e(title)}</h4><p>{e(what)} {t['n_correct']} of {t['n_construction']} labelled correctly "
                 f"({pct(t['accuracy'])}%)"
                 + (f"; {t['suppressed_called_deleted']} SUPPRESSED-truth labelled DELETED" if src == "construction"
                    else "") + ".</p>" + _matrix(t, truths))
    return html


def _confusion(page: Page, s: dict[str, Any], title: str = "Confusion matrix (construction truth)",
               anchor: str = "confusion", intro: str = "") -> None:
    danger = s["suppressed_called_deleted"]
    body = (intro + f"<p>{s['n_correct']} of {s['n_construction']} construction-truth organisms labelled correctly "
            f"({pct(s['accuracy'])}%). "
            + (f"<b class='bad'>{danger} SUPPRESSED-truth organism(s) labelled DELETED (the dangerous error).</b>"
               if danger else "No SUPPRESSED-truth organism was labelled DELETED.")
            + f" Deletion-score AUROC (DELETED vs SUPPRESSED truth): {num(s['deletion_score_auroc'], '.3f')}.</p>"
            + _matrix(s))
    nt = s.get("never_trained")
    if nt and nt["n"]:
        bad = nt["called_suppressed_or_not_unlearned"]
        labs = ", ".join(f"{lab} {n}" for lab, n in nt["labels"].items() if n)
        body += ("<p>Never-trained models (reference_b, at sampling temperatures 2 and 0.5, and with a skewed "
                 f"prior over answer values), {nt['n']} audited: {labs}. "
                 + (f"<b class='bad'>{bad} labelled SUPPRESSED or NOT_UNLEARNED: a model that never saw the forget "
                    "set failed the audit.</b>" if bad else "None labelled SUPPRESSED or NOT_UNLEARNED.") + "</p>")
    per = s.get("per_label")
    if per:
        body += "<table><tr><th>label</th><th>precision</th><th>recall</th><th>truth</th><th>labelled</th></tr>" + "".join(
            f"<tr><th>{lab}</th><td>{num(v['precision'])}</td><td>{num(v['recall'])}</td><td>{v['n_truth']}</td>"
            f"<td>{v['n_called']}</td></tr>" for lab, v in per.items()) + "</table>"
    body += _by_source(s)
    if s["wrong"]:
        body += "<h3>Wrong labels</h3><table><tr><th>suite</th><th>organism</th><th>truth</th><th>verdict</th>" \
                "<th>reason</th></tr>" + "".join(
                    f"<tr><td>{e(w['suite'])}</td><td>{e(w['organism'])}</td><td>{e(str(w['truth']))}</td>"
                    f"<td>{e(w['verdict'])}</td><td>{e(w['reason'])}</td></tr>" for w in s["wrong"]) + "</table>"
    page.section(title, body, anchor)


def _scores(page: Page, rows: list[dict[str, Any]]) -> None:
    fig = go.Figure()
    for t in TRUTHS:
        rs = [r for r in rows if r["truth"] == t]
        if rs:
            fig.add_trace(go.Box(y=[r["deletion_score"] for r in rs], name=t, boxpoints="all", jitter=0.4,
                                 text=[f"{r['suite']} · {r['organism']} → {r['verdict']}" for r in rs],
                                 marker_color=LABEL_COLORS.get(t, "#333")))
    fig.update_layout(title="Deletion score by ground truth", yaxis_title="deletion score", height=420)
    page.section("Deletion score", page.figure(fig, "Each point is one organism's deletion score (1 − its largest "
                                                    "informative recovery), grouped by construction truth."), "scores")


def _per_lens(page: Page, s: dict[str, Any]) -> None:
    per = s["per_lens_auroc"]
    rows = "".join(f"<tr><td>{e(k)}</td><td>{num(v['auroc'], '.3f')}</td><td>{v['n_deleted']}</td>"
                   f"<td>{v['n_suppressed']}</td></tr>" for k, v in per.items())
    page.section("Per-lens AUROC", "<p>AUROC of each lens's own deletion score (1 − its largest informative "
                 "recovery) for DELETED vs SUPPRESSED truth; a lens with no informative reading on an organism "
                 "leaves it out.</p><table><tr><th>lens</th><th>AUROC</th><th>DELETED organisms</th>"
                 f"<th>SUPPRESSED organisms</th></tr>{rows}</table>", "lenses")


def _methods(page: Page, methods: list[dict[str, Any]], no_ref: list[dict[str, Any]]) -> None:
    if not methods:
        return
    without = {(r["suite"], r["organism"]): r["verdict"] for r in no_ref}

    def lab(v: str | None) -> str:
        return "—" if v is None else f"<span style='color:{LABEL_COLORS[v]}'>{e(v)}</span>"

    rows = "".join(
        f"<tr><td>{e(r['suite'])}</td><td>{e(r['organism'])}</td><td>{lab(r['verdict'])}</td>"
        f"<td>{lab(without.get((r['suite'], r['organism'])))}</td>"
        f"<td>{num(r['deletion_score'])}</td><td>{num(r['relearn_recovery'])}</td>"
        f"<td>{num(r['quantization_recovery'])}</td><td>{num(r['forget_score'])}</td><td>{num(r['retain_score'])}</td></tr>"
        for r in methods)
    page.section("Method-produced organisms", "<p>No construction truth: the verdict beside what the relearn and "
                 "quantization attacks recovered.</p><table><tr><th>suite</th><th>organism</th><th>verdict</th>"
                 "<th>verdict without N</th><th>deletion score</th><th>relearn recovery</th>"
                 "<th>quantization recovery</th><th>forget score</th>"
                 f"<th>retain score</th></tr>{rows}</table>", "methods")


def render_calibration(result: dict[str, Any]) -> str:
    page = Page()
    s = result["summary"]
    _confusion(page, s)
    if s.get("no_reference"):
        _confusion(page, s["no_reference"], "Without a reference (N withheld)", "no-reference",
                   "<p>The same organisms audited again with the never-trained reference withheld: every end "
                   "point is then estimated from base and unlearned model alone, and the verdict rule gives no "
                   "DELETED without a reference (docs/verdict.md). Here the never-trained models must not be "
                   "SUPPRESSED or NOT_UNLEARNED, and no SUPPRESSED-truth organism DELETED.</p>")
    for name, table in (s.get("by_reference") or {}).items():
        _confusion(page, table, f"Against {name}", f"vs-{name}",
                   f"<p>The construction organisms and never-trained models of the suites that build "
                   f"<code>{e(name)}</code> audited again with it as N (a never-trained model in B's basis, "
                   "like TOFU's retain90; docs/calibration.md). Not in the main table.</p>")
    _scores(page, [r for r in result["rows"] if r["truth"] is not None and r.get("reference", True) is not False
                   and r.get("reference_name") in (None, "reference_a")])
    _per_lens(page, s)
    _methods(page, result.get("methods", []), result.get("methods_no_reference", []))
    runs = "".join(f"<tr><td>{e(r['suite'])}</td><td>{r['build_s']}</td><td>{r['audit_s']}</td>"
                   f"<td>{r.get('audit_no_reference_s', '—')}</td></tr>" for r in result.get("runs", []))
    page.section("Runs", "<table><tr><th>suite</th><th>build s</th><th>audit s</th><th>audit s without N</th></tr>"
                 f"{runs}</table>"
                 f"<pre>{e(json.dumps(result['config'], indent=1))}</pre>", "runs")
    n_nr = sum(r.get("reference", True) is False for r in result["rows"])
    return page.html(f"Calibration: preset {result['preset']}",
                     f"{len(result['rows']) - n_nr} organisms" + (f" ({n_nr} also without a reference)" if n_nr else "")
                     + f" · attack grids: {e(str(result.get('grids', 'preset')))} · {result['created']} · "
                       f"{result['total_s']} s")


def render_calibration_file(json_path: str | Path, html_path: str | Path) -> Path:
    p = Path(json_path)
    try:
        result = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read calibration results {p}: {err}") from None
    return atomic_write_text(html_path, render_calibration(result))
