"""Render an :class:`~audit.schema.AuditLog` as one self-contained HTML file.

plotly.js is inlined once; the page makes no network request. All user-provided text
is escaped; figure JSON has ``<`` escaped so no string can close the script tag.
"""

from __future__ import annotations

import functools
import html
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from audit.atomic import atomic_write_text
from audit.caveats import NO_REFERENCE_VERDICT
from audit.lensdata import BehaviorData, lens_data, read_results
from audit.schema import AuditLog, LensResult
from reports.fmt import count, finite, num, seconds

ROLE_COLORS = {"base": "#1f77b4", "unlearned": "#d62728", "reference": "#7f7f7f"}
LABEL_COLORS = {"DELETED": "#2ca02c", "SUPPRESSED": "#ff7f0e", "NOT_UNLEARNED": "#d62728", "INCONCLUSIVE": "#7f7f7f"}

e = html.escape


@functools.cache
def _default_policy() -> dict[str, Any]:
    from audit.policy import Policy

    return Policy().model_dump()


def policy_value(policy: Mapping[str, Any] | None, key: str) -> Any:
    """A setting of the policy a run applied, read from the policy its log stores
    (``AuditLog.policy``), by dotted key (``thresholds.behavior_recovery``,
    ``side_effect_tolerance``). Today's default stands in where the log does not store it
    (an older log, or a page rendered without one), or stores something that is not a
    finite number where the default is one."""
    found: Any = policy or {}
    default: Any = _default_policy()
    for part in key.split("."):
        found = found.get(part) if isinstance(found, Mapping) else None
        default = default[part]
    if isinstance(default, float) and finite(found) is None:
        return default
    return default if found is None else found


class Page:
    """Collects sections and figures of one report.

    Args:
        policy: the policy the run applied, as its log stores it: sections draw its
            thresholds (see :func:`policy_value`).
    """

    def __init__(self, policy: Mapping[str, Any] | None = None) -> None:
        self.parts: list[str] = []
        self.figures: list[tuple[str, str]] = []
        self.policy: Mapping[str, Any] = policy or {}

    def section(self, title: str, body: str = "", sid: str | None = None) -> None:
        anchor = f' id="{e(sid)}"' if sid else ""
        self.parts.append(f"<section{anchor}><h2>{e(title)}</h2>{body}</section>")

    def html(self, title: str, subtitle: str = "") -> str:
        """The whole page: one file, plotly.js inlined once, a CSP that forbids any request."""
        plots = "\n".join(f"Plotly.newPlot('{fid}', ...(f=>[f.data,f.layout])({payload}), "
                          "{responsive:true,displaylogo:false});" for fid, payload in self.figures)
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; script-src 'unsafe-inline' "
            "'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; font-src data:\">"
            f"<title>{e(title)}</title><style>{_CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{e(title)}</h1><p class='sub'>{e(subtitle)}</p>"
            + "".join(self.parts)
            + f"<script>{_JS}\n{plots}</script></body></html>"
        )

    def figure(self, fig: go.Figure, caption: str = "") -> str:
        fid = f"fig{len(self.figures)}"
        payload = json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder).replace("<", "\\u003c")
        self.figures.append((fid, payload))
        cap = f"<p class='cap'>{e(caption)}</p>" if caption else ""
        return f"<div class='fig' id='{fid}' data-figure='1'></div>{cap}"


def _verdicts(page: Page, log: AuditLog) -> None:
    cards = []
    for v in log.verdicts:
        ev = "".join(
            f"<li>{e(x.lens)} · {e(x.reading)}: {num(x.value)} (CI {num(x.ci_low)}–{num(x.ci_high)})</li>"
            for x in v.evidence[:4]
        )
        cards.append(
            f"<div class='card' style='border-color:{LABEL_COLORS[v.label]}'>"
            f"<div class='scope'>{e(v.scope)}</div>"
            f"<div class='label' style='color:{LABEL_COLORS[v.label]}'>{e(v.label)}</div>"
            f"<div>deletion score <b>{num(v.deletion_score)}</b></div>"
            f"<p>{e(v.reason)}</p><ul>{ev}</ul></div>"
        )
    ru = log.retain_utility
    util = ""
    if ru:
        flag = " <b class='bad'>collapsed: deletion cannot be told from damage</b>" if ru.get("collapsed") else ""
        util = (f"<p>Retain utility: base {num(ru['base'])}, unlearned {num(ru['unlearned'])} "
                f"(drop {num(ru['drop'])}){flag}</p>")
    pr = log.policy_result
    gate = ""
    if pr:
        fails = "".join(f"<li>{e(f)}</li>" for f in pr.get("failures", []))
        gate = ("<p><b style='color:#2ca02c'>Policy passed.</b></p>" if pr.get("passed")
                else f"<p><b class='bad'>Policy failed</b> (audit run exits 1):</p><ul>{fails}</ul>")
    page.section("Verdict", "<div class='cards'>" + "".join(cards) + "</div>" + util + gate, "verdict")


# readings that are not informative may stretch the axis this far and no further
_UNINFORMATIVE_SPAN = (-1.0, 2.0)


def recovery_axis(rows: list[tuple[float, float, float, bool]], marks: list[float]) -> tuple[float, float]:
    """The recovery chart's x range: it fits every informative reading (value and CI), the
    marked thresholds and 0..1; an uninformative reading widens it only within
    ``_UNINFORMATIVE_SPAN`` (its CI never), so one unpowered reading with a CI of −6.5 to
    4.5 cannot squeeze every other bar. ``rows``: (value, ci_low, ci_high, informative)."""
    pts = [0.0, 1.0, *marks]
    for v, lo, hi, informative in rows:
        if informative:
            pts += [x for x in (v, lo, hi) if math.isfinite(x)]
        else:
            pts.append(min(max(v, _UNINFORMATIVE_SPAN[0]), _UNINFORMATIVE_SPAN[1]))
    a, b = min(pts), max(pts)
    pad = 0.06 * (b - a)
    return a - pad, b + pad


def _recovery_chart(page: Page, log: AuditLog) -> None:
    rows, names, colors = [], [], []
    for lens, res in log.lenses.items():
        for r in res.recoveries:
            if not math.isfinite(r.value):
                continue
            names.append(f"{lens} · {r.reading}")
            rows.append((r.value, r.ci_low, r.ci_high, r.informative))
            colors.append("#1f77b4" if r.informative else "#c7c7c7")
    if not names:
        return
    lines = tuple((policy_value(log.policy, f"thresholds.{key}"), label) for key, label in
                  (("tau_d", "τ_d"), ("tau_s", "τ_s"), ("behavior_recovery", "behavior gate")))
    x0, x1 = recovery_axis(rows, [x for x, _ in lines])

    def clip(x: float) -> float:
        return min(max(x, x0), x1)

    vals, lo, hi, hover, clipped = [], [], [], [], []
    for name, (v, cl, ch, _) in zip(names, rows, strict=True):
        vc = clip(v)
        lo_c = clip(cl) if math.isfinite(cl) else vc
        hi_c = clip(ch) if math.isfinite(ch) else vc
        vals.append(vc)
        lo.append(max(vc - lo_c, 0.0))
        hi.append(max(hi_c - vc, 0.0))
        hover.append(f"R {num(v)} (CI {num(cl)} to {num(ch)})")
        out = [x for x in (v, cl, ch) if math.isfinite(x) and not x0 <= x <= x1]
        if out:  # drawn at the edge, with a marker that gives the real numbers
            left = any(x < x0 for x in out)
            right = any(x > x1 for x in out)
            for side, edge in (("left", x0), ("right", x1)):
                if (left and side == "left") or (right and side == "right"):
                    clipped.append((edge, name, side, f"R {num(v)}, CI {num(cl)} to {num(ch)} (off the axis)"))
    fig = go.Figure(go.Bar(x=vals, y=names, orientation="h", marker_color=colors, name="recovery",
                           error_x={"type": "data", "array": hi, "arrayminus": lo}, hovertext=hover,
                           hoverinfo="text+y", showlegend=False))
    if clipped:
        fig.add_trace(go.Scatter(
            x=[c[0] for c in clipped], y=[c[1] for c in clipped], mode="markers+text", name="clipped at the edge",
            marker={"symbol": ["triangle-left" if c[2] == "left" else "triangle-right" for c in clipped],
                    "size": 13, "color": "#444"},
            text=[c[3] for c in clipped], hovertext=[c[3] for c in clipped], hoverinfo="text",
            textposition=["middle right" if c[2] == "left" else "middle left" for c in clipped],
            textfont={"size": 11}, showlegend=False, meta={"clipped": True},
        ))
    for x, label in lines:
        fig.add_vline(x=x, line_dash="dot", annotation_text=label, annotation_position="top")
    fig.update_layout(title="Recovery by lens (grey: uninformative; ◀ ▶: off the axis, real value beside)",
                      xaxis_title="recovery R", xaxis={"range": [x0, x1], "autorange": False},
                      height=200 + 32 * len(names), margin={"l": 260, "t": 80, "b": 60})
    page.section("Recovery", page.figure(fig, "R = (S(U) − S(N)) / (S(B) − S(N)), bootstrap 95% CI. The axis fits "
                                         "the informative readings; a reading or CI beyond it is drawn to the edge "
                                         "and marked with its real value."), "recovery")


def _behavior(page: Page, res: LensResult) -> None:
    d = lens_data(res, BehaviorData)
    fig = go.Figure()
    for role in ("base", "unlearned", "reference"):
        if role in d.forget:
            f, r = d.forget[role], d.retain.get(role)
            fig.add_bar(name=role, x=["forget ranking", "forget greedy", "retain ranking", "retain greedy"],
                        y=[f.score, f.greedy, r.score if r else None, r.greedy if r else None],
                        marker_color=ROLE_COLORS[role])
    fig.update_layout(barmode="group", title="Behavior", yaxis_range=[0, 1.05], height=360)
    page.section("Behavior", page.figure(fig, "Knowledge score (answer ranked above distractors) and greedy exact match."), "behavior")
    _item_table(page, d.items)


def _item_table(page: Page, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    head = "".join(f"<th onclick='sortTable(this)'>{e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{e('' if r.get(c) is None else str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    page.section(
        "Items",
        "<input id='itemsearch' placeholder='filter items…' oninput='filterTable(this.value)'>"
        f"<div class='scroll'><table id='item-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>",
        "items",
    )


def _metadata(page: Page, log: AuditLog) -> None:
    rows = "".join(
        f"<tr><td>{e(r)}</td><td>{e(m.path)}</td><td><code>{e(m.hash)}</code></td><td>{e(m.architecture)}</td>"
        f"<td>{m.n_layers}</td><td>{m.d_model}</td><td>{count(m.n_params)}</td></tr>"
        for r, m in log.models.items()
    )
    models = ("<table><tr><th>role</th><th>path</th><th>hash</th><th>architecture</th><th>layers</th>"
              f"<th>d_model</th><th>params</th></tr>{rows}</table>")
    items = "".join(f"<li>{e(k)}: {e(v.path)} ({v.n_items} items, format {e(v.format)}, hash <code>{e(v.hash)}</code>)"
                    f"{'. ' + e('; '.join(v.notes)) if v.notes else ''}</li>"
                    for k, v in log.items.items())
    timings = ", ".join(f"{e(k)} {seconds(v)}" for k, v in log.timings.items())
    versions = ", ".join(f"{e(k)} {e(v)}" for k, v in log.versions.items())
    cfg = e(json.dumps(log.config, indent=2))
    page.section("Run", f"{models}<ul>{items}</ul><p>Timings: {timings}</p><p>Versions: {versions}</p>"
                 f"<p>Created {e(log.created)}; seed {e(str(log.environment.get('seed')))}</p>"
                 f"<details><summary>Resolved config</summary><pre>{cfg}</pre></details>", "run")


def _lens_notes(page: Page, log: AuditLog) -> None:
    rows = []
    for name, res in log.lenses.items():
        msg = f"<b class='bad'>error: {e(res.error)}</b>" if res.error else "; ".join(e(n) for n in res.notes)
        rows.append(f"<tr><td>{e(name)}</td><td>{seconds(res.seconds)}</td><td>{msg}</td></tr>")
    page.section("Lenses run", "<table><tr><th>lens</th><th>time</th><th>notes</th></tr>" + "".join(rows) + "</table>")


# lens name -> section renderer; lenses without one still appear in the recovery chart
SECTIONS: dict[str, Callable[[Page, LensResult], None]] = {"behavior": _behavior}


def section(lens: str):
    """Register the report section of a lens (modules in ``reports/`` use this)."""

    def deco(fn: Callable[[Page, LensResult], None]):
        SECTIONS[lens] = fn
        return fn

    return deco

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
h1{margin-bottom:0}.sub{color:#666}section{margin:2rem 0}
.cards{display:flex;flex-wrap:wrap;gap:1rem}.card{border:3px solid;border-radius:8px;padding:1rem;flex:1 1 320px}
.label{font-size:1.6rem;font-weight:700}.scope{color:#666}.bad{color:#d62728}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:3px 6px}
th{cursor:pointer;background:#f4f4f4}.scroll{max-height:420px;overflow:auto}.cap{color:#666;font-size:.85rem}
#itemsearch{margin-bottom:.5rem;padding:4px;width:300px}
"""

_JS = """
function sortTable(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),b=t.tBodies[0];
const asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
[...b.rows].sort((x,y)=>{const a=x.cells[i].textContent,c=y.cells[i].textContent,na=parseFloat(a),nc=parseFloat(c);
const r=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?r:-r}).forEach(r=>b.appendChild(r));}
function filterTable(q){q=q.toLowerCase();for(const r of document.getElementById('item-table').tBodies[0].rows)
r.style.display=r.textContent.toLowerCase().includes(q)?'':'none';}
"""


def render(log: AuditLog) -> str:
    """The report's HTML for a results log."""
    page = Page(log.policy)
    _verdicts(page, log)
    _recovery_chart(page, log)
    for name, res in log.lenses.items():
        if res.error is None and name in SECTIONS:
            SECTIONS[name](page, res)
    _lens_notes(page, log)
    _metadata(page, log)
    m = log.models
    title = f"Unlearning audit: {m['unlearned'].path if 'unlearned' in m else ''}"
    refs = [m[r].path for r in m if r == "reference" or r.startswith("reference_")]
    ref = ", ".join(refs) if refs else f"none ({NO_REFERENCE_VERDICT})"
    sub = f"base {m['base'].path if 'base' in m else ''} · reference{'s' if len(refs) > 1 else ''} {ref} · {log.created}"
    return page.html(title, sub)


def render_file(log_path: str | Path, html_path: str | Path) -> Path:
    """Render ``audit_log.json`` to ``report.html`` (atomic write).

    Raises:
        InputError: the file is not a valid audit log, or a lens's data does not fit its
            data model (:func:`audit.lensdata.read_results`).
    """
    log = read_results(log_path)
    return atomic_write_text(html_path, render(log))
