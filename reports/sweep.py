"""The zoo report of ``audit sweep``: rendered from ``sweep.json`` only (no model, no torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from audit.atomic import atomic_write_text
from audit.errors import InputError
from reports.fmt import MISSING, finite, num, seconds
from reports.render import LABEL_COLORS, Page, e


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def _evidence(ev: dict[str, Any] | None) -> str:
    if not ev:
        return MISSING
    return f"{ev['lens']} ({ev['reading']}) {num(ev['value'])} [{num(ev['ci_low'])}, {num(ev['ci_high'])}]"


def _link(r: dict[str, Any], base: Path | None) -> str:
    if not r.get("report") or base is None:
        return e(r["name"])
    try:
        href = os.path.relpath(r["report"], base)
    except ValueError:  # another drive (Windows)
        href = r["report"]
    return f"<a href='{e(href)}'>{e(r['name'])}</a>"


def _table(page: Page, rows: list[dict[str, Any]], base: Path | None) -> None:
    body = ""
    for r in rows:
        if r["status"] == "failed":
            body += (f"<tr><td>{e(r['name'])}</td><td>{e(r['method'])}</td><td>{e(_params(r['params']))}</td>"
                     f"<td class='bad'>failed</td><td colspan='4'>{e(r['error'] or '')}</td></tr>")
            continue
        ret = r["retain"] or {}
        util = (f"{num(ret.get('unlearned'))} (B {num(ret.get('base'))}"
                + (", collapsed" if ret.get("collapsed") else "") + ")") if ret else MISSING
        color = LABEL_COLORS.get(r["label"], "#333")
        body += (f"<tr><td>{_link(r, base)}</td><td>{e(r['method'])}</td><td>{e(_params(r['params']))}</td>"
                 f"<td style='color:{color}'><b>{e(r['label'])}</b></td><td>{num(r['deletion_score'])}</td>"
                 f"<td>{e(_evidence(r['evidence']))}</td><td>{e(util)}</td>"
                 f"<td>{seconds(r['seconds']) if r['seconds'] is not None else MISSING}</td></tr>")
    page.section("Audits", "<p>One row per audit of the manifest. Strongest evidence: the verdict's first "
                 "recovery (lens, reading, value and its 95% CI). Retain utility: U's retain score (B's).</p>"
                 "<table><tr><th>audit</th><th>method</th><th>params</th><th>label</th><th>deletion score</th>"
                 f"<th>strongest evidence</th><th>retain utility</th><th>time</th></tr>{body}</table>", "audits")


def _scores(page: Page, rows: list[dict[str, Any]]) -> None:
    done = sorted((r for r in rows if r["status"] == "done"), key=lambda r: r["method"])  # stable: manifest order within
    if not done:
        return
    fig = go.Figure()
    for lab, color in LABEL_COLORS.items():
        rs = [r for r in done if r["label"] == lab]
        if rs:
            fig.add_trace(go.Bar(x=[[r["method"] for r in rs], [r["name"] for r in rs]],
                                 y=[finite(r["deletion_score"]) for r in rs], name=lab, marker_color=color,
                                 text=[_params(r["params"]) for r in rs]))
    fig.update_layout(title="Deletion score per audit, grouped by method", yaxis_title="deletion score",
                      yaxis_range=[0, 1.05], height=440, barmode="overlay")
    page.section("Deletion score", page.figure(fig, "Each bar is one audit's deletion score (1 − its largest "
                                                    "informative recovery), grouped by method, coloured by label."),
                 "scores")


def _recovery(page: Page, rows: list[dict[str, Any]]) -> None:
    done = [r for r in rows if r["status"] == "done"]
    lenses = sorted({k for r in done for k in r["recovery"]})
    if not done or not lenses:
        return
    z = [[finite(r["recovery"].get(k)) for k in lenses] for r in done]
    fig = go.Figure(go.Heatmap(z=z, x=lenses, y=[f"{r['method']} · {r['name']}" for r in done], zmin=0, zmax=1,
                               colorscale="RdYlGn_r", colorbar={"title": "recovery"},
                               hovertemplate="%{y}<br>%{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(title="Recovery per lens across the zoo", height=max(300, 60 + 28 * len(done)))
    page.section("Recovery per lens", page.figure(fig, "Each cell: the lens's largest informative recovery on that "
                                                       "audit (primary and scan readings, side effects within "
                                                       "tolerance); blank where the lens had none."), "recovery")


def render_sweep(result: dict[str, Any], base: str | Path | None = None) -> str:
    """The zoo page of a sweep result (``sweep.json``'s content). Links to each audit's report
    are relative to ``base`` (default: the sweep's own folder, where ``sweep.html`` goes)."""
    rows = result["rows"]
    page = Page()
    where = Path(base) if base is not None else (Path(result["out"]) if result.get("out") else None)
    _table(page, rows, where)
    _scores(page, rows)
    _recovery(page, rows)
    page.section("Run", f"<pre>{e(json.dumps(result.get('engine', {}), indent=1))}</pre>", "run")
    n_failed = sum(r["status"] == "failed" for r in rows)
    return page.html(f"Sweep: {Path(result.get('manifest', 'manifest')).name}",
                     f"{len(rows)} audits" + (f", {n_failed} failed" if n_failed else "")
                     + f" · {result.get('created', '')} · {result.get('total_s', '?')} s")


def render_sweep_file(json_path: str | Path, html_path: str | Path) -> Path:
    p = Path(json_path)
    try:
        result = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read sweep results {p}: {err}") from None
    return atomic_write_text(html_path, render_sweep(result, Path(html_path).parent))
